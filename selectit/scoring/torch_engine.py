"""The scoring engine: label probabilities of rating prompts, all K' prompts of a sample in one pass.

Contract of `Scorer.score(requests)`:
- each `RatingRequest` is one sample with its K' rendered prompts (same scale K); the result holds
  one `CellResult` per (request, prompt), in any order;
- `probs[k-1]` = softmax over the **full vocabulary** at the prompt's last token, read at the
  token id of the digit k (k = 1..K), `mass` = Σ probs; the prompt is tokenized with the
  tokenizer's default special tokens, exactly as a separate forward of that prompt would be;
- a prompt longer than the model's context (`LLM.max_tokens`) has the middle of its response cut
  (head and tail kept, joined by " … "), so the rating question stays; the cell is `truncated`;
- a request whose scoring fails (NaN, an exception, out of memory even alone) yields failed cells
  (`probs=None`, `error` set); the other requests go on. Never a default score.

How (docs/method.md §4): the K' token lists share a prefix C. On a CPU one row C + s_1 + … + s_K' is
run with a 4-D mask where each suffix sees C and itself (position ids restart at len(C)); on an
accelerator C runs once and the K' suffixes in one batched forward on its KV cache. Either way the
logits at the end of each s_i equal those of K' separate forwards. The requests of one sample (a
conversation's turns, rendered as a growing transcript) are packed as one tree: the transcript
once, each turn's prompts branching off at that turn's end (`_tree`). When C is short (the `reference` layout)
packing saves nothing and costs attention, so the K' prompts go as separate rows instead (the
cheaper of the two by a FLOP estimate). Rows are sorted by length and batched with padding under
a token budget. The model's own forward is called, so every architecture's logit processing is
kept; it computes logits only at the label positions (`logits_to_keep`). The budget halves on
out-of-memory.
`exact=True` runs in float32 (|Δp| ≤ 1e-4 against separate forwards, tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from selectit.contract import CellResult, RatingRequest, ScoringEngine, split_on_failure
from selectit.formulas import token_score  # noqa: F401  (re-exported for callers of the engine)
from selectit.scoring.preparation import ELLIPSIS, Prepared, RequestPreparation

__all__ = ["ELLIPSIS", "CellResult", "RatingRequest", "Scorer", "default_device", "load_scorer"]


@dataclass
class _Row:
    """One sequence of a forward: a packed tree of prompts (a trunk and branches), or one prompt.

    Segment 0 is the trunk (a packed row's shared tokens); every other segment is a branch that
    sees, of each segment in `sees[seg]`, the tokens before a position, and itself causally. The
    position ids of a branch go on from its branch point, so each cell's tokens are at the
    positions of a separate forward of its prompt.
    """

    cells: list[tuple[int, int]]  # (request index, prompt index) whose label is read in this row
    tokens: list[int]  # trunk + branches (packed) or one prompt's tokens
    pos: list[int]  # position ids
    seg: list[int]  # segment of each token (an unpacked row: all 1)
    label_at: list[int]  # index into tokens of each cell's last token
    label_ids: list[list[int]] = field(default_factory=list)  # per cell: token ids of 1..K
    prefix: int = 0  # the trunk's length in a packed row (0: an unpacked row)
    sees: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # seg → [(segment, before position)]
    paths: list[tuple[int, list[int]]] = field(default_factory=list)  # per cell: (branch point off the trunk, its tokens after it)


def _common(ids: list[list[int]]) -> int:
    """The longest common prefix of token lists, leaving each at least one token."""
    c, limit = 0, min(map(len, ids)) - 1
    while c < limit and all(x[c] == ids[0][c] for x in ids):
        c += 1
    return c


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _keeps_positions_per_row() -> bool:
    """Whether this transformers takes a (B, L) `logits_to_keep`, positions per row (5.23 does, 5.19 does not)."""
    from transformers import modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")


class Scorer(RequestPreparation, ScoringEngine):
    """A loaded model that rates samples; see the module docstring for the contract."""

    engine = "torch"  # provenance of the score rows it produces (with `engine_version`)

    def __init__(self, model: Any, tokenizer: Any, *, model_id: int = 0, max_tokens: int = 2048,
                 label_ids: dict[str, list[int]] | None = None, exact: bool = False,
                 max_batch_tokens: int | None = None, max_padding: float | None = 0.1) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.exact = exact
        self.forwards = 0
        self.tokens_run = 0  # real (unpadded) tokens through the model, for FLOP estimates
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_batch_tokens = max_batch_tokens or token_budget(model.config, self.dtype.itemsize,
                                                                 free_memory(self.device), self.device.type)
        # Padding is computed like real tokens: a batch stops growing past this share of it
        # (measured: unbounded padding made exact mode no faster than batch 1 on 2 CPU cores).
        self.max_padding = max_padding
        # Packed rows: on an accelerator C runs once on its KV cache and the suffixes over it (plain
        # causal attention keeps SDPA's fused kernels); on a CPU one row under a 4-D mask, which
        # measured ~10% faster there (fewer, larger forwards; benchmarks/RESULTS.md).
        self.shared = "mask" if self.device.type == "cpu" else "cache"
        self._init_labels(label_ids)
        import transformers

        self.engine_version = f"torch {torch.__version__}, transformers {transformers.__version__}"
        cfg = model.config
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._hidden = int(getattr(cfg, "hidden_size", 1))
        self._layers = int(getattr(cfg, "num_hidden_layers", 1))
        n_params = sum(p.numel() for p in model.parameters())
        embed = model.get_input_embeddings().weight.numel()
        self._flops_per_token = 2 * max(n_params - embed, 1)
        # A custom 4-D mask is used as given, so packing must apply the model's sliding window itself:
        # per layer type where the config lists layer types (Gemma-3, Qwen2), else on every layer
        # (Mistral, Phi-3: a set `sliding_window` and no layer types).
        layer_types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        self._sliding = window if (not layer_types or "sliding_attention" in layer_types) else None
        self._sliding_everywhere = not layer_types
        self._keep_per_row = _keeps_positions_per_row()
        # The KV cache argument: `cache` since transformers 5.24, `past_key_values` before.
        import inspect

        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # -- public -------------------------------------------------------------------------------

    def score(self, requests: Sequence[RatingRequest],
              progress: Callable[[int], None] | None = None) -> list[CellResult]:
        """Score every (request, prompt) cell; `progress(n)` is called with cells finished."""
        results: list[CellResult] = []
        prepared: dict[int, Prepared] = {}
        for i, req in enumerate(requests):
            try:
                prepared[i] = self._prepared(req)
            except Exception as exc:  # noqa: BLE001 - one bad request never stops the batch
                results.extend(self._failed(req, range(len(req.prompts)), exc))
                if progress:
                    progress(len(req.prompts))
        # The turns of one conversation (requests of one sample) are packed together: its
        # transcript once, each turn's prompts branching off at that turn's end.
        by_sample: dict[int, list[int]] = {}
        for i in prepared:
            by_sample.setdefault(requests[i].sample_id, []).append(i)
        rows: list[_Row] = []
        for group in by_sample.values():
            rows.extend(self._rows_of([(i, prepared[i]) for i in group]))
        for batch in self._batches(rows):
            for row, probs, err in self._run(batch):
                for j, (r, cell) in enumerate(row.cells):
                    results.append(self._cell(prepared[r], cell, None if probs is None else probs[j].tolist(), err))
            if progress:
                progress(sum(len(r.cells) for r in batch))
        return results

    def _batches(self, rows: list[_Row]) -> list[list[_Row]]:
        """Rows grouped into forwards: packed and unpacked apart, sorted by the length that pads.

        A batch grows while its padded tokens fit the budget and its padding stays under
        `max_padding` of its shortest row. Packed rows on the KV cache pad their prefixes (the
        suffixes are the short rating questions), so they are sorted and measured by prefix.
        """
        cached = self.shared == "cache"

        def length(r: _Row) -> int:
            return r.prefix if (cached and r.prefix) else len(r.tokens)

        def padded(batch: list[_Row], longest: int) -> int:
            if cached and batch[0].prefix:  # prefix forward + suffix forward
                return len(batch) * longest + sum(len(r.tokens) - r.prefix for r in batch)
            return len(batch) * longest

        out: list[list[_Row]] = []
        for kind in (False, True):
            group = sorted((r for r in rows if bool(r.prefix) == kind), key=length)
            start = 0
            while start < len(group):
                batch = [group[start]]
                while start + len(batch) < len(group):
                    nxt = group[start + len(batch)]
                    if padded(batch + [nxt], length(nxt)) > self.max_batch_tokens:
                        break
                    if self.max_padding is not None and length(nxt) > (1 + self.max_padding) * length(batch[0]):
                        break
                    batch.append(nxt)
                start += len(batch)
                out.append(batch)
        return out

    # -- preparation (tokenizing, truncating, label ids: selectit.scoring.preparation) -------------------

    def _cost(self, n: int) -> float:
        # FLOPs of one row of n tokens: the dense layers plus the (fully computed) masked attention.
        return self._flops_per_token * n + 4 * self._layers * self._hidden * n * n

    def _rows(self, i: int, prep: Prepared) -> list[_Row]:
        """The rows of one request (see `_rows_of`)."""
        return self._rows_of([(i, prep)])

    def _rows_of(self, group: list[tuple[int, Prepared]]) -> list[_Row]:
        """One packed row for the requests of one sample (its K' prompts; a conversation's turns),
        or where that costs more (a short shared prefix: the reference layout) a row per request
        (a packed row each, or one row per prompt), by a FLOP estimate."""
        if len(group) > 1:
            tree = self._tree(group)
            apart = [r for g in group for r in self._rows_of([g])]
            return [tree] if self._cost(len(tree.tokens)) <= sum(self._cost(len(r.tokens)) for r in apart) else apart
        i, prep = group[0]
        if len(prep.ids) > 1 and self._packs(prep.ids, _common(prep.ids)):
            return [self._tree(group)]
        return [_Row([(i, k)], x, list(range(len(x))), [1] * len(x), [len(x) - 1],
                     [self._labels(prep.req.prompts[k])[: prep.req.scale]], sees={1: []})
                for k, x in enumerate(prep.ids)]

    def _tree(self, group: list[tuple[int, Prepared]]) -> _Row:
        """A packed row: a trunk, and every prompt of the group branching off it.

        The trunk is the longest common prefix of one request's prompts (the longest such: a
        conversation's last turn, whose transcript holds every earlier turn's). Every request
        leaves the trunk where its first prompt does, with a stem (its prompts' common prefix
        beyond that point) from which its prompts branch in turn.
        """
        cs = [_common(prep.ids) for _, prep in group]
        top = max(range(len(group)), key=lambda g: cs[g])
        trunk = group[top][1].ids[0][:cs[top]]
        tokens, pos, seg = list(trunk), list(range(len(trunk))), [0] * len(trunk)
        cells, label_at, labels, paths = [], [], [], []
        sees: dict[int, list[tuple[int, int]]] = {}
        for g, (i, prep) in enumerate(group):
            ids, c = prep.ids, cs[g]
            b = 0  # where this request leaves the trunk
            while b < c and b < len(trunk) and ids[0][b] == trunk[b]:
                b += 1
            up = [(0, b)]
            if c > b:  # a stem: the prompts' common tokens beyond the trunk
                stem = len(sees) + 1
                sees[stem] = list(up)
                tokens += ids[0][b:c]
                pos += range(b, c)
                seg += [stem] * (c - b)
                up.append((stem, c))
            for k, x in enumerate(ids):
                leaf = len(sees) + 1
                sees[leaf] = list(up)
                tokens += x[c:]
                pos += range(c, len(x))
                seg += [leaf] * (len(x) - c)
                label_at.append(len(tokens) - 1)
                cells.append((i, k))
                labels.append(self._labels(prep.req.prompts[k])[: prep.req.scale])
                paths.append((b, x[b:]))
        return _Row(cells, tokens, pos, seg, label_at, labels, prefix=len(trunk), sees=sees, paths=paths)

    def _packs(self, ids: list[list[int]], c: int) -> bool:
        """Whether one packed row of these prompts (prefix length c) costs less than a row each."""
        return self._cost(c + sum(len(x) - c for x in ids)) < sum(self._cost(len(x)) for x in ids)

    # -- the numeric kernel -------------------------------------------------------------------

    def _tree_mask(self, rows: list[_Row], seg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """allowed[b, q, k] (B, T, T) bool: key k is in q's own segment and not in q's future, or in a
        segment q's branch sees (`_Row.sees`) before the position where q's branch leaves it."""
        B, T = seg.shape
        S = max(max(r.seg) for r in rows) + 1
        # limit[b, s, a]: the position before which segment s sees segment a (0: not at all)
        limit = torch.zeros((B, S, S), dtype=torch.long)
        for b, r in enumerate(rows):
            for s, seen in r.sees.items():
                for a, before in seen:
                    limit[b, s, a] = before
        limit = limit.to(seg.device)
        sq, sk = seg.clamp(min=0)[:, :, None], seg.clamp(min=0)[:, None, :]  # (B, T, 1), (B, 1, T)
        seen_before = limit.gather(1, sq.expand(B, T, S)).gather(2, sk.expand(B, T, T))  # (B, T, T)
        pq, pk = pos[:, :, None], pos[:, None, :]
        real = (seg[:, :, None] >= 0) & (seg[:, None, :] >= 0)
        allowed = real & (((sk == sq) & (pk <= pq)) | ((sk != sq) & (pk < seen_before)))
        return allowed | torch.eye(T, dtype=torch.bool, device=seg.device)  # padding queries see themselves: no NaN

    @torch.inference_mode()
    def _forward(self, rows: list[_Row]) -> list[torch.Tensor]:
        """Label probabilities per row: a (n_cells, K) float32 tensor each."""
        B, T = len(rows), max(len(r.tokens) for r in rows)
        dev = self.device
        ids = torch.full((B, T), self._pad_id, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        seg = torch.full((B, T), -1, dtype=torch.long)  # -1 = padding
        for b, r in enumerate(rows):
            n = len(r.tokens)
            ids[b, :n], pos[b, :n], seg[b, :n] = torch.tensor(r.tokens), torch.tensor(r.pos), torch.tensor(r.seg)
        ids, pos, seg = ids.to(dev), pos.to(dev), seg.to(dev)
        allowed = self._tree_mask(rows, seg, pos)  # (B, T, T)
        pq, pk = pos[:, :, None], pos[:, None, :]
        neg = torch.finfo(self.dtype).min

        def as_mask(a: torch.Tensor) -> torch.Tensor:  # (B, T, T) bool → (B, 1, T, T) additive float
            return torch.zeros(a.shape, dtype=self.dtype, device=dev).masked_fill(~a, neg)[:, None]

        mask: Any
        if all(len(r.label_at) == 1 for r in rows):
            # No packed row: plain causal attention with right padding. A (B, T) padding mask lets
            # the model take its fused causal attention path instead of an explicit (T, T) mask.
            mask = (seg >= 0).long()
        else:
            mask = as_mask(allowed)
            if self._sliding:  # sliding layers see only the last `window` positions
                windowed = as_mask(allowed & (pq - pk < self._sliding))
                mask = windowed if self._sliding_everywhere else {"full_attention": mask, "sliding_attention": windowed}
        # The model's own forward computes logits at the label positions only, with all of its
        # logit processing (Gemma's soft-cap, Granite's logits_scaling, Cohere's logit_scale, ...).
        if self._keep_per_row:  # (B, L) positions per row, padded by repeating the row's last one
            L = max(len(r.label_at) for r in rows)
            keep = torch.tensor([r.label_at + r.label_at[-1:] * (L - len(r.label_at)) for r in rows], device=dev)
            cols = [j for r in rows for j in range(len(r.label_at))]
        else:  # older transformers: one 1-D list of positions, kept in every row
            union = sorted({t for r in rows for t in r.label_at})
            keep = torch.tensor(union, device=dev)
            cols = [union.index(t) for r in rows for t in r.label_at]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                            logits_to_keep=keep).logits  # (B, L, V)
        self.forwards += 1
        self.tokens_run += sum(len(r.tokens) for r in rows)
        b_idx = torch.tensor([b for b, r in enumerate(rows) for _ in r.label_at], device=dev)
        logits = logits[b_idx, torch.tensor(cols, device=dev)].float()  # (N, V), N label positions
        logp = torch.log_softmax(logits, dim=-1)  # (N, V): softmax over the full vocabulary
        out, n = [], 0
        for r in rows:
            lab = torch.tensor(r.label_ids, device=dev)  # (cells, K)
            out.append(logp[n:n + len(r.label_at)].gather(1, lab).exp().cpu())  # (cells, K)
            n += len(r.label_at)
        return out

    @torch.inference_mode()
    def _forward_cached(self, rows: list[_Row]) -> list[torch.Tensor]:
        """Label probabilities of packed rows: C once per row, then every suffix on C's KV cache.

        Two calls of the model's own forward, with its own masks (causal, sliding window, padding):
        the prefixes C (left-padded, so each C ends where its suffixes start and a sliding window
        spans real tokens only) with `use_cache`, then all suffixes of all rows in one batch
        (right-padded) over that cache, each suffix row given its own row's cache.

        A conversation's turns branch off its transcript (the trunk) at several points: then the
        cache keeps every layer whole (no sliding-window layer drops old keys), and the suffix
        forward gets a 4-D mask that hides the trunk's keys from its branch point on (and applies
        the sliding window by position).
        """
        dev = self.device
        B = len(rows)
        Lp = max(r.prefix for r in rows)
        ids = torch.full((B, Lp), self._pad_id, dtype=torch.long)
        pos = torch.zeros((B, Lp), dtype=torch.long)
        pmask = torch.zeros((B, Lp), dtype=torch.long)
        for b, r in enumerate(rows):
            c = r.prefix
            ids[b, Lp - c:] = torch.tensor(r.tokens[:c])
            pos[b, Lp - c:] = torch.arange(c)
            pmask[b, Lp - c:] = 1
        # One suffix row per cell: its tokens after its branch point, up to its label.
        suffixes = [path for r in rows for path in r.paths]
        owner = [b for b, r in enumerate(rows) for _ in r.paths]
        branched = any(c != rows[o].prefix for (c, _), o in zip(suffixes, owner))
        given = {}
        if branched:
            from transformers import DynamicCache

            given = {self._cache_kw: DynamicCache()}  # no config: every layer keeps all its keys
        out = self.model(input_ids=ids.to(dev), attention_mask=pmask.to(dev), position_ids=pos.to(dev),
                         use_cache=True, logits_to_keep=1, **given)
        cache = out.cache if self._cache_kw == "cache" else out.past_key_values
        del out
        S, Ls = len(suffixes), max(len(t) for _, t in suffixes)
        sids = torch.full((S, Ls), self._pad_id, dtype=torch.long)
        spos = torch.zeros((S, Ls), dtype=torch.long)
        smask = torch.zeros((S, Ls), dtype=torch.long)
        for j, (c, t) in enumerate(suffixes):
            sids[j, :len(t)] = torch.tensor(t)
            spos[j] = torch.arange(c, c + Ls)
            smask[j, :len(t)] = 1
        owner_t = torch.tensor(owner, device=dev)
        cache.batch_select_indices(owner_t)  # each suffix row gets its own row's C
        mask: Any = torch.cat([pmask.to(dev)[owner_t], smask.to(dev)], dim=1)
        if branched:
            mask = self._branch_mask(pos.to(dev)[owner_t], pmask.to(dev)[owner_t], spos.to(dev), smask.to(dev),
                                     torch.tensor([c for c, _ in suffixes], device=dev))
        last = [len(t) - 1 for _, t in suffixes]
        if self._keep_per_row:
            keep = torch.tensor([[i] for i in last], device=dev)
            cols = [0] * S
        else:
            union = sorted(set(last))
            keep = torch.tensor(union, device=dev)
            cols = [union.index(i) for i in last]
        logits = self.model(input_ids=sids.to(dev), attention_mask=mask, position_ids=spos.to(dev),
                            use_cache=True, logits_to_keep=keep, **{self._cache_kw: cache}).logits
        del cache
        self.forwards += 2
        self.tokens_run += sum(r.prefix for r in rows) + sum(len(t) for _, t in suffixes)
        logits = logits[torch.arange(S, device=dev), torch.tensor(cols, device=dev)].float()  # (S, V)
        logp = torch.log_softmax(logits, dim=-1)
        res, n = [], 0
        for r in rows:
            lab = torch.tensor(r.label_ids, device=dev)
            res.append(logp[n:n + len(r.label_at)].gather(1, lab).exp().cpu())
            n += len(r.label_at)
        return res

    def _branch_mask(self, ppos: torch.Tensor, pmask: torch.Tensor, spos: torch.Tensor, smask: torch.Tensor,
                     branch: torch.Tensor) -> Any:
        """The 4-D mask of suffixes over a whole cache: (S, 1, Ls, Lp + Ls) additive, or one per layer
        type. Suffix j sees its trunk's real keys before `branch[j]`, and its own tokens causally.

        ppos, pmask: (S, Lp) the trunk's positions and real tokens per suffix row; spos, smask:
        (S, Ls); branch: (S,).
        """
        S, Ls = spos.shape
        causal = torch.ones((Ls, Ls), dtype=torch.bool, device=spos.device).tril()
        on_trunk = (pmask.bool() & (ppos < branch[:, None]))[:, None, :].expand(S, Ls, -1)  # (S, Ls, Lp)
        own = causal[None] & (smask.bool()[:, None, :] | torch.eye(Ls, dtype=torch.bool, device=spos.device))
        allowed = torch.cat([on_trunk, own], dim=2)  # (S, Ls, Lp + Ls)
        neg = torch.finfo(self.dtype).min

        def as_mask(a: torch.Tensor) -> torch.Tensor:
            return torch.zeros(a.shape, dtype=self.dtype, device=a.device).masked_fill(~a, neg)[:, None]

        if not self._sliding:
            return as_mask(allowed)
        kpos = torch.cat([ppos, spos], dim=1)[:, None, :]  # (S, 1, Lp + Ls)
        windowed = as_mask(allowed & (spos[:, :, None] - kpos < self._sliding))
        return windowed if self._sliding_everywhere else {"full_attention": as_mask(allowed), "sliding_attention": windowed}

    def _run(self, batch: list[_Row]) -> list[tuple[_Row, torch.Tensor | None, str | None]]:
        """Forward a batch; on failure split it in halves (and shrink the budget on OOM)."""
        forward = self._forward_cached if self.shared == "cache" and batch[0].prefix else self._forward

        def shrink_on_oom(exc: Exception) -> None:
            if _is_oom(exc):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.max_batch_tokens = max(1, self.max_batch_tokens // 2)

        return split_on_failure(batch, forward, shrink_on_oom)

#: Tokens per forward on a CPU at most: larger batches were measured no faster on 2 cores.
CPU_MAX_BATCH_TOKENS = 4096


def free_memory(device: torch.device) -> int:
    """Bytes free on the device now: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def token_budget(config: Any, itemsize: int, free_bytes: int, device_type: str = "cuda") -> int:
    """Tokens per forward that half of `free_bytes` holds, for a model of this config.

    A token costs its KV cache in every layer, counted six times (a prefix's cache is copied for
    each of its K' ≈ 5 suffixes, and the suffix forward concatenates it per layer), plus its
    largest transient activations (hidden states, attention projections, the MLP) twice over.
    A CPU is capped at `CPU_MAX_BATCH_TOKENS`.

    >>> from types import SimpleNamespace as C
    >>> token_budget(C(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    ...                num_attention_heads=32, num_key_value_heads=32), 2, 66 << 30)
    10598
    """
    hidden = int(getattr(config, "hidden_size", 1024))
    heads = int(getattr(config, "num_attention_heads", 16))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    layers = int(getattr(config, "num_hidden_layers", 24))
    inter = int(getattr(config, "intermediate_size", 4 * hidden))
    kv = 2 * layers * kv_heads * head_dim * itemsize
    per_token = 6 * kv + 2 * (4 * hidden + 3 * inter) * itemsize
    budget = max(256, int(free_bytes * 0.5 / per_token))
    return min(budget, CPU_MAX_BATCH_TOKENS) if device_type != "cuda" else budget


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_scorer(model: Any, *, device: str | None = None, exact: bool = False,
                max_batch_tokens: int | None = None, max_padding: float | None = 0.1,
                device_map: str | None = None) -> Scorer:
    """A `Scorer` for a model version (an `LLM` row): loads weights in its dtype (float32 if exact).

    `device_map="auto"` spreads a model too big for one GPU over all of them (see `loading`).
    """
    from selectit.scoring import loading
    from selectit.timing import phase

    with phase("model load: GGUF cache lookup"):
        src = loading.resolve_source(model.source)
        expected = model.fingerprint if src.is_gguf else None
        loading.model_dir(src, expected)  # hashes a GGUF once (remembered), builds its cache once
    dtype = "float32" if exact else model.dtype
    device = device or default_device()
    with phase("model load: tokenizer"):
        tokenizer = loading.load_hf_tokenizer_for_model(src, expected)
    with phase("model load: weights"):
        hf = loading.load_hf_model(src, dtype, device, expected, device_map=device_map)
    return Scorer(hf, tokenizer, model_id=model.id, max_tokens=model.max_tokens,
                  label_ids=dict(model.label_ids or {}), exact=exact, max_batch_tokens=max_batch_tokens,
                  max_padding=max_padding)
