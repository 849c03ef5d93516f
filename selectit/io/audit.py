"""Known-bad twins of a dataset's records, stored as the audit dataset `D.audit` (`selectit audit`).

`make_audit(engine, "alpaca", size=40, seed=0)` draws 40 records of `alpaca` — ordered by
sha256("<seed>:<content hash>"), as `select --random` draws, so the same seed draws the same
records on every store — and makes known-bad twins of each:

- ``mismatched``: the next drawn record's response (a response to another instruction);
- ``truncated``: the response cut after its first 30% of words (records of two words or more);
- ``refusal``: a refusal, one of `REFUSALS` (picked by the record's key);
- ``echo``: the instruction (and input) echoed back as the response;
- ``turn``: multi-turn records only: the last assistant turn before the response replaced by the
  next drawn record's response.

Originals (kind ``clean``) and twins are the members of the dataset ``<D>.audit``; the tables
`audits` and `audit_samples` tie it to D and say what each member is. Twins are ordinary samples,
scored once like any other, but no other dataset holds them, so D's ranking, selections, exports,
reports and counts never see them. A twin that is a record of D (or equal to its original) is left
out: it is not known to be bad. `delete_audit` removes the audit dataset and the twins no other
dataset holds, with their scores; D's samples and scores are untouched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from selectit.errors import NoSuchDataset, SelectitError
from selectit.fusion.selection import random_key
from selectit.io.records import canonical, digest
from selectit.store import db
from selectit.store import lookups
from selectit.store.schema import (
    Audit,
    AuditSample,
    Dataset,
    DatasetSample,
    JobSample,
    Sample,
    SampleEmbedding,
    SampleSignature,
    Score,
    SelectionSample,
    SignatureBand,
    SimilarPair,
)

#: The corruptions, in the order their twins are stored.
KINDS = ("mismatched", "truncated", "refusal", "echo", "turn")
#: The share of a response's words a ``truncated`` twin keeps.
TRUNCATE_SHARE = 0.3
#: The default draw: this share of the dataset, at least `MIN_SIZE` records (all of a smaller one).
DEFAULT_SHARE = 0.03
MIN_SIZE = 20
SUFFIX = ".audit"
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, I cannot assist with this request.",
    "As an AI language model, I am unable to answer that.",
    "Unfortunately, I can't provide a response to this.",
)
_TURN = re.compile(r"^(System|User|Assistant|Tool): ", re.M)


@dataclass(frozen=True)
class Twin:
    kind: str
    instruction: str
    input: str
    output: str
    source: str  # the content hash of the drawn record it was made from


@dataclass(frozen=True)
class AuditSet:
    """What `make_audit` stored: the audit dataset's name, how many records were drawn, twins per kind."""

    dataset: str
    name: str
    seed: int
    size: int
    twins: dict[str, int] = field(default_factory=dict)

    @property
    def n_twins(self) -> int:
        return sum(self.twins.values())


def audit_name(dataset: str) -> str:
    """The audit dataset of `dataset`: ``alpaca`` → ``alpaca.audit``."""
    return dataset + SUFFIX


def default_size(n: int) -> int:
    """A few percent of the dataset's `n` records, at least `MIN_SIZE` (all of a smaller dataset)."""
    return min(n, max(MIN_SIZE, math.ceil(DEFAULT_SHARE * n)))


def truncated(text: str, share: float = TRUNCATE_SHARE) -> str | None:
    """`text` cut after the first `share` of its words (at least one), its own spacing kept;
    None for a text of fewer than two words (nothing to cut).

    >>> truncated("one two three four five six seven eight nine ten")
    'one two three'
    """
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    if len(ends) < 2:
        return None
    return text[:ends[max(1, math.floor(share * len(ends))) - 1]]


def replaced_turn(instruction: str, response: str) -> str | None:
    """The multi-turn `instruction` (``"<Role>: <text>"`` lines) with the text of its last assistant
    turn replaced by `response`; None when it holds no assistant turn.

    >>> replaced_turn("User: Hi\\nAssistant: Hello!\\nUser: Name a colour.", "42.")
    'User: Hi\\nAssistant: 42.\\nUser: Name a colour.'
    """
    starts = list(_TURN.finditer(instruction))
    at = max((i for i, m in enumerate(starts) if m.group(1) == "Assistant"), default=None)
    if at is None:
        return None
    end = starts[at + 1].start() - 1 if at + 1 < len(starts) else len(instruction)  # before the "\n"
    return instruction[:starts[at].end()] + response + instruction[end:]


def make_twins(records: list[tuple[str, str, str, str]], seed: int) -> list[Twin]:
    """The twins of the drawn `records` ((content hash, instruction, input, output), in draw order):
    for each kind, one per record it applies to. The ``mismatched`` and ``turn`` twins take the
    next record's response (the last takes the first's)."""
    twins: list[Twin] = []
    n = len(records)
    for kind in KINDS:
        for i, (h, ins, inp, out) in enumerate(records):
            other = records[(i + 1) % n][3]
            new: tuple[str, str, str] | None = None
            if kind == "mismatched" and n > 1:
                new = (ins, inp, other)
            elif kind == "truncated":
                cut = truncated(out)
                new = None if cut is None else (ins, inp, cut)
            elif kind == "refusal":
                new = (ins, inp, REFUSALS[int(random_key(seed, "refusal:" + h), 16) % len(REFUSALS)])
            elif kind == "echo":
                new = (ins, inp, ins + ("\n" + inp if inp else ""))
            elif kind == "turn" and n > 1:
                context = replaced_turn(ins, other)
                new = None if context is None else (context, inp, out)
            if new is not None:
                twins.append(Twin(kind, *(canonical(t) for t in new), source=h))
    return twins


def make_audit(engine: Engine, dataset: str, *, size: int | None = None, seed: int = 0) -> AuditSet:
    """Draw `size` records of `dataset` (default: `default_size`) with `seed`, make their twins and
    store both as the members of the audit dataset (replacing an earlier audit of `dataset`)."""
    if size is not None and size < 2:
        raise SelectitError(f"--size must be at least 2 (a mismatched twin takes another record's response); got {size}")
    name = audit_name(dataset)
    with db.session_scope(engine) as session:
        subject = session.get(Dataset, lookups.dataset_id(session, dataset))
        assert subject is not None
        if session.get(Audit, subject.id) is not None:
            raise SelectitError(f"{dataset!r} is an audit dataset; audit the dataset it was drawn from")
        conn = session.connection()
        members = conn.execute(
            sa.select(Sample.content_hash, Sample.instruction, Sample.input, Sample.output, Sample.id)
            .join(DatasetSample, DatasetSample.sample_id == Sample.id)
            .where(DatasetSample.dataset_id == subject.id)).all()
        if len(members) < 2:
            raise SelectitError(f"{dataset!r} holds {len(members)} record(s); an audit needs at least 2")
        n = min(len(members), default_size(len(members)) if size is None else size)
        drawn = sorted(members, key=lambda r: random_key(seed, r[0]))[:n]
        twins = make_twins([tuple(r[:4]) for r in drawn], seed)
        audit_id = _audit_dataset(session, subject, name, seed, n)
        in_subject = {r[0] for r in members}
        ids = {r[0]: r[4] for r in drawn}
        # clean members first, then the twins, each kept once (two twins can be the same text)
        rows: list[tuple[int, str, int]] = [(ids[r[0]], "clean", ids[r[0]]) for r in drawn]
        counts = dict.fromkeys(KINDS, 0)
        hashes = [digest(t.instruction, t.input, t.output) for t in twins]
        sample_ids = _store_samples(conn, twins, hashes)
        seen = set(ids.values())
        for twin, h in zip(twins, hashes):
            if h in in_subject or sample_ids[h] in seen:
                continue  # a record of the dataset, or a twin already kept: not known to be bad
            seen.add(sample_ids[h])
            rows.append((sample_ids[h], twin.kind, ids[twin.source]))
            counts[twin.kind] += 1
        before = _twin_ids(conn, audit_id)
        conn.execute(sa.delete(AuditSample).where(AuditSample.dataset_id == audit_id))
        conn.execute(sa.delete(DatasetSample).where(DatasetSample.dataset_id == audit_id))
        conn.execute(sa.insert(DatasetSample), [dict(dataset_id=audit_id, sample_id=sid, position=i)
                                               for i, (sid, _, _) in enumerate(rows)])
        conn.execute(sa.insert(AuditSample), [dict(dataset_id=audit_id, sample_id=sid, kind=kind, source_id=src)
                                             for sid, kind, src in rows])
        _drop_orphans(conn, before)  # twins of an earlier draw that no dataset holds now
    return AuditSet(dataset, name, seed, n, {k: v for k, v in counts.items() if v})


def _audit_dataset(session: sa.orm.Session, subject: Dataset, name: str, seed: int, size: int) -> int:
    """The id of `subject`'s audit dataset, created (or its draw updated) here."""
    found = session.scalars(sa.select(Audit).where(Audit.subject_id == subject.id)).one_or_none()
    source = f"selectit audit of {subject.name}: {size} records drawn with seed {seed}, and their known-bad twins"
    if found is None:
        if session.scalars(sa.select(Dataset.id).where(Dataset.name == name)).first() is not None:
            raise SelectitError(f"a dataset named {name!r} exists and is not the audit of {subject.name!r}; "
                                f"rename it (or delete it) before auditing {subject.name!r}")
        ds = Dataset(name=name, source=source)
        session.add(ds)
        session.flush()
        session.add(Audit(dataset_id=ds.id, subject_id=subject.id, seed=seed, size=size))
        session.flush()
        return ds.id
    found.seed, found.size = seed, size
    session.get(Dataset, found.dataset_id).source = source  # type: ignore[union-attr]
    session.flush()
    return found.dataset_id


def _store_samples(conn: Connection, twins: list[Twin], hashes: list[str]) -> dict[str, int]:
    """content hash → sample id of every twin, inserting those not stored yet."""
    found: dict[str, int] = {}
    unique = sorted(set(hashes))
    for i in range(0, len(unique), 500):
        chunk = unique[i:i + 500]
        found.update((h, i) for h, i in conn.execute(sa.select(Sample.content_hash, Sample.id)
                                  .where(Sample.content_hash.in_(chunk))).all())
    new, queued = [], set()
    for t, h in zip(twins, hashes):
        if h not in found and h not in queued:
            queued.add(h)
            new.append(dict(content_hash=h, instruction=t.instruction, input=t.input, output=t.output,
                            n_chars=len(t.instruction) + len(t.input) + len(t.output)))
    if new:
        conn.execute(sa.insert(Sample), new)
        for i in range(0, len(new), 500):
            chunk = [r["content_hash"] for r in new[i:i + 500]]
            found.update((h, i) for h, i in conn.execute(sa.select(Sample.content_hash, Sample.id)
                                      .where(Sample.content_hash.in_(chunk))).all())
    return found


def _twin_ids(conn: Connection, audit_id: int) -> list[int]:
    return list(conn.execute(sa.select(AuditSample.sample_id).where(
        AuditSample.dataset_id == audit_id, AuditSample.kind != "clean")).scalars())


def _drop_orphans(conn: Connection, twins: list[int]) -> int:
    """Delete those of the `twins` (and their scores) that no dataset or audit holds any more.
    Samples in a frozen selection or an open job stay."""
    orphans: list[int] = []
    for i in range(0, len(twins), 500):
        orphans += [r[0] for r in conn.execute(sa.select(Sample.id).where(
            Sample.id.in_(twins[i:i + 500]),
            ~sa.exists().where(DatasetSample.sample_id == Sample.id),
            ~sa.exists().where(AuditSample.sample_id == Sample.id),
            ~sa.exists().where(SelectionSample.sample_id == Sample.id),
            ~sa.exists().where(JobSample.sample_id == Sample.id)))]
    for i in range(0, len(orphans), 500):
        chunk = orphans[i:i + 500]
        conn.execute(sa.delete(Score).where(Score.sample_id.in_(chunk)))
        # the twins' other cells: near-duplicate signatures and their bands, embeddings and pairs
        conn.execute(sa.delete(SignatureBand).where(SignatureBand.sample_id.in_(chunk)))
        conn.execute(sa.delete(SampleSignature).where(SampleSignature.sample_id.in_(chunk)))
        conn.execute(sa.delete(SimilarPair).where(sa.or_(SimilarPair.sample_a.in_(chunk),
                                                         SimilarPair.sample_b.in_(chunk))))
        conn.execute(sa.delete(SampleEmbedding).where(SampleEmbedding.sample_id.in_(chunk)))
        conn.execute(sa.delete(Sample).where(Sample.id.in_(chunk)))
    return len(orphans)


def delete_audit(engine: Engine, dataset: str) -> int:
    """Remove `dataset`'s audit: the audit dataset, and the twins no other dataset holds with their
    scores (D's own samples and scores stay). The number of samples deleted; `NoSuchDataset` when
    `dataset` has no audit."""
    with db.session_scope(engine) as session:
        audit = session.scalars(sa.select(Audit).join(Dataset, Dataset.id == Audit.subject_id)
                                .where(Dataset.name == dataset)).one_or_none()
        if audit is None:
            raise NoSuchDataset(f"{dataset!r} has no audit; make one with `selectit audit --dataset {dataset}`")
        conn = session.connection()
        audit_id = audit.dataset_id
        twins = _twin_ids(conn, audit_id)
        conn.execute(sa.delete(AuditSample).where(AuditSample.dataset_id == audit_id))
        conn.execute(sa.delete(DatasetSample).where(DatasetSample.dataset_id == audit_id))
        conn.execute(sa.delete(Audit).where(Audit.dataset_id == audit_id))
        conn.execute(sa.delete(Dataset).where(Dataset.id == audit_id))
        return _drop_orphans(conn, twins)
