"""Near-duplicate signature cells: MinHash signatures of each sample's whole text, keyed by
(sample, signature config), and their LSH band rows.

A signature is a cell like a rating (docs/dedup.md): the producer's settings that change the
value — the library and its version, the hash scheme, seed, n-gram, permutations and bands — are
its version (`MinHashConfig`, one `signature_configs` row), so a new setting means new cells,
never a mix. `fill` computes the missing cells only: ingest calls it for the samples it added,
`selectit score` for any sample still without one. The text is the sample's whole text (every
turn: instruction, input, output), normalised (`normalise`), cut into word n-grams (a text of
fewer words than n is one shingle, the whole text). Each row also keeps two keys for the
query-time dedups: `norm_key` (the normalised whole text: exact duplicates) and `prompt_key`
(the normalised first user turn: ``--dedup prompt``).

The producer is a few lines of pure Python over `rensa` (a Rust MinHash, measured 37× faster
than `datasketch` with the same estimation error here), so it lives beside the tables it fills.

    >>> normalise("  Hello,   WORLD!  ")
    'hello world'
    >>> shingles("one two", 5)
    ['one two']
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from selectit.store.db import reading
from selectit.store.schema import SampleSignature, SignatureConfig, utcnow

#: Defaults (docs/dedup.md): word 5-grams, 128 permutations in 32 bands of 4 rows — a pair of
#: Jaccard 0.7 shares a bucket with probability 1 − (1 − 0.7⁴)³² ≈ 0.9998, one of 0.3 with 0.23;
#: every candidate is then checked against the estimated Jaccard (`Ranking.jaccard`, 0.7).
NGRAM, NUM_PERM, BANDS, SEED = 5, 128, 32, 1
#: Bump when `normalise`, `shingles` or the keys change: the config, hence the cells, change with it.
SCHEME = "nfkc-casefold-punct-space/word-ngrams/blake2b64-keys/multiply-xor-band-buckets/v1"
_ROLE_LINE = re.compile(r"^(System|User|Assistant|Tool): ", re.MULTILINE)
_PUNCT = re.compile(r"[^\w\s]|_")
#: Samples per transaction of `fill` (a sample is 1 signature row and BANDS band rows).
CHUNK = 2000


@dataclass(frozen=True)
class MinHashConfig:
    """One version of the signature producer (stored as JSON in `signature_configs.config`)."""

    library: str
    library_version: str
    algorithm: str
    scheme: str = SCHEME
    ngram: int = NGRAM
    num_perm: int = NUM_PERM
    bands: int = BANDS
    seed: int = SEED

    def __post_init__(self) -> None:
        if self.num_perm % self.bands or (self.num_perm // self.bands) % 2:
            raise ValueError(f"{self.num_perm} permutations do not make {self.bands} bands of an even number of rows")

    @property
    def rows(self) -> int:
        """Rows (permutations) per band."""
        return self.num_perm // self.bands

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()


@cache
def default_config() -> MinHashConfig:
    """The default config with the installed rensa's version and algorithm version."""
    from importlib.metadata import version

    import rensa

    return MinHashConfig("rensa", version("rensa"), f"RMinHash v{rensa.RMinHash.ALGORITHM_VERSION}")


# ------------------------------------------------------------------------------------- the text
def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation to spaces, whitespace collapsed: the form shingles and
    exact-duplicate keys are taken of (so whitespace, casing and punctuation never tell copies apart)."""
    return " ".join(_PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def shingles(norm: str, ngram: int) -> list[str]:
    """The distinct word n-grams of a normalised text; one shingle, the whole text, when it has
    fewer than `ngram` words (so "hi" and "hello" never share one)."""
    words = norm.split()
    if len(words) < ngram:
        return [norm]
    return list(set(map(" ".join, zip(*(words[i:] for i in range(ngram))))))  # MinHash ignores the order


def whole_text(instruction: str, input_: str, output: str) -> str:
    """Every turn of the sample: its instruction (the rendered turns before the answer), input and output."""
    return "\n".join(t for t in (instruction, input_, output) if t)


def first_user_turn(instruction: str, input_: str) -> str:
    """The first user turn: an instruction rendered from several turns ("User: …" lines) gives
    the first User turn's text; a single-turn instruction is itself, with its input."""
    marks = list(_ROLE_LINE.finditer(instruction))
    if marks and marks[0].start() == 0:
        for here, after in zip(marks, [*marks[1:], None]):
            if here.group(1) == "User":
                return instruction[here.end():after.start() if after else len(instruction)].rstrip("\n")
    return whole_text(instruction, input_, "")


def key64(text: str) -> int:
    """A signed 64-bit key of a text (blake2b), for exact-duplicate and prompt groups."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


#: Odd 64-bit multipliers of the band hash (splitmix64's and two of its mixing constants).
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def band_buckets(sigs: Any, config: MinHashConfig) -> Any:
    """The bucket of each band of each signature, a (samples, bands) int64 array: the band's
    `rows` uint32 values taken two at a time as uint64 words, each multiplied by its own odd
    constant, XOR-ed (wrapping arithmetic; a collision only adds a candidate, which is verified)."""
    import numpy as np

    words = sigs.astype(np.uint64).reshape(len(sigs), config.bands, -1, 2)  # [sample, band, word, half]
    words = words[..., 0] | (words[..., 1] << np.uint64(32))  # [sample, band, word]
    out = np.zeros(words.shape[:2], dtype=np.uint64)
    for j in range(words.shape[2]):
        out ^= words[..., j] * np.uint64(_MIX[j % len(_MIX)])
    return out.view(np.int64)


def signatures(texts: Sequence[str], config: MinHashConfig) -> Any:
    """MinHash signatures of `texts` as a (len(texts), num_perm) uint32 array."""
    return _signed([shingles(normalise(t), config.ngram) for t in texts], config)


def _signed(sets: Sequence[list[str]], config: MinHashConfig) -> Any:
    import numpy as np
    import rensa

    # One call for the batch: the same digests as RMinHash(num_perm, seed).update(tokens), one by one.
    return np.array(rensa.RMinHash.digests_from_token_sets(sets, config.num_perm, config.seed),
                    dtype=np.uint32).reshape(len(sets), config.num_perm)  # [sample, permutation]


def decode(blob: bytes) -> Any:
    """A stored signature back as a uint32 array."""
    import numpy as np

    return np.frombuffer(blob, dtype="<u4")


# ------------------------------------------------------------------------------------- the cells
def config_id(conn: Connection, config: MinHashConfig) -> int:
    """The `signature_configs` row of `config`, created when new (safe against a concurrent writer)."""
    table = SignatureConfig.__table__
    insert = (postgresql.insert if conn.engine.dialect.name == "postgresql" else sqlite.insert)(table)
    conn.execute(insert.values(config_hash=config.config_hash, config=config.as_json(), created_at=utcnow())
                 .on_conflict_do_nothing(index_elements=[table.c.config_hash]))
    return int(conn.execute(sa.select(table.c.id).where(table.c.config_hash == config.config_hash)).scalar_one())


def find_config_id(conn: Connection, config: MinHashConfig) -> int | None:
    """The id of `config` when any cell was computed under it (reads only)."""
    table = SignatureConfig.__table__
    found = conn.execute(sa.select(table.c.id).where(table.c.config_hash == config.config_hash)).scalar()
    return None if found is None else int(found)


def _missing(conn: Connection, cfg_id: int, dataset_id: int | None) -> list[int]:
    """Ids of the samples (of the dataset, or all) with no signature under `cfg_id`."""
    sql = ("SELECT s.id FROM samples s LEFT JOIN sample_signatures g ON g.sample_id = s.id AND g.config_id = :c "
           "WHERE g.sample_id IS NULL")
    if dataset_id is not None:
        sql += " AND s.id IN (SELECT sample_id FROM dataset_samples WHERE dataset_id = :d)"
    return [int(r[0]) for r in conn.execute(sa.text(sql + " ORDER BY s.id"), {"c": cfg_id, "d": dataset_id})]


def fill(engine: Engine, *, dataset_id: int | None = None, dataset: str | None = None,
         config: MinHashConfig | None = None) -> int:
    """Compute the missing signature cells (of a dataset's samples, by id or name, or of every
    sample) and their band rows; the number of cells computed. Insert-or-ignore: two processes
    filling at once write each cell once. A dataset name that does not exist computes nothing."""
    config = config or default_config()
    with engine.begin() as conn:
        if dataset is not None:
            found = conn.execute(sa.text("SELECT id FROM datasets WHERE name = :n"), {"n": dataset}).scalar()
            if found is None:
                return 0
            dataset_id = int(found)
        cfg_id = config_id(conn, config)
        todo = _missing(conn, cfg_id, dataset_id)
    done = 0
    for start in range(0, len(todo), CHUNK):
        with engine.begin() as conn:
            done += _write(conn, cfg_id, config, todo[start:start + CHUNK])
    return done


def _write(conn: Connection, cfg_id: int, config: MinHashConfig, ids: list[int]) -> int:
    """Compute and insert the cells of `ids` (one transaction); how many were new."""
    rows = conn.execute(sa.text("SELECT id, instruction, input, output FROM samples WHERE id IN "
                                f"({', '.join(str(int(i)) for i in ids)}) ORDER BY id")).all()
    norms = [normalise(whole_text(r[1], r[2] or "", r[3])) for r in rows]
    sets = [shingles(norm, config.ngram) for norm in norms]
    sigs = _signed(sets, config)
    now = utcnow()
    cells = [{"sample_id": sid, "config_id": cfg_id, "norm_key": key64(norm),
              "prompt_key": key64(normalise(first_user_turn(instruction, input_ or ""))),
              "n_shingles": len(tokens), "signature": sig.astype("<u4").tobytes(), "created_at": now}
             for (sid, instruction, input_, _), norm, tokens, sig in zip(rows, norms, sets, sigs)]
    if not cells:
        return 0
    postgres = conn.engine.dialect.name == "postgresql"
    table = SampleSignature.__table__
    # RETURNING tells which cells were new (rowcount of an executemany is -1 on psycopg).
    new = {r[0] for r in conn.execute((postgresql if postgres else sqlite).insert(table).on_conflict_do_nothing()
                                      .returning(table.c.sample_id), cells)}
    buckets = band_buckets(sigs, config).tolist()  # [sample, band]
    bands = [(cfg_id, b, bucket, sid) for (sid, *_), row in zip(rows, buckets) if sid in new
             for b, bucket in enumerate(row)]
    if bands:  # BANDS rows a sample: straight to the driver, past SQLAlchemy's per-row work
        mark = "%s" if postgres else "?"
        conn.exec_driver_sql(f"INSERT INTO signature_bands (config_id, band, bucket, sample_id) VALUES "
                             f"({mark}, {mark}, {mark}, {mark})", bands)
    return len(new)


def count(engine: Engine, dataset: str | None = None, config: MinHashConfig | None = None) -> tuple[int, int]:
    """(signature cells stored under `config`, samples without one) — of the dataset or of every sample."""
    config = config or default_config()
    with reading(engine).connect() as conn:  # a read: it never waits for a writer's lock
        cfg_id = find_config_id(conn, config)
        dataset_id = None if dataset is None else conn.execute(
            sa.text("SELECT id FROM datasets WHERE name = :n"), {"n": dataset}).scalar()
        where = "" if dataset is None else " WHERE id IN (SELECT sample_id FROM dataset_samples WHERE dataset_id = :d)"
        total = int(conn.execute(sa.text("SELECT count(*) FROM samples" + where), {"d": dataset_id}).scalar_one())
        if cfg_id is None:
            return 0, total
        sql = "SELECT count(*) FROM sample_signatures WHERE config_id = :c"
        if dataset_id is not None:
            sql += " AND sample_id IN (SELECT sample_id FROM dataset_samples WHERE dataset_id = :d)"
        done = int(conn.execute(sa.text(sql), {"c": cfg_id, "d": dataset_id}).scalar_one())
        return done, total - done
