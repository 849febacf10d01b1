"""Shared pieces of the analyses: batched attention readouts, model scores, confidence intervals, JSON output.

Every analysis that runs the model goes through `attention_to` or `model_scores`: inputs are grouped into
fixed-size batches of one padded length (the tokenizer's buckets), so a whole analysis compiles once per
bucket, and each batch is one jitted forward that reduces the attention pattern on the device to what the
analysis reads (``[batch, layer, head, qpos]``), never returning the ``[layer, head, pos, pos]`` patterns.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jaxmech.files import atomic_write
from jaxmech.models.bert import HookedEncoder

DEFAULT_BATCH = 32


def head_name(layer: int, head: int) -> str:
    """``"layer.head"``, the analyses' head label."""
    return f"{int(layer)}.{int(head)}"


def parse_head_names(
    heads: Iterable[str | tuple[int, int]], n_layers: int, n_heads: int, *, where: str = "heads"
) -> list[tuple[int, int]]:
    """``["10.1", (3, 4)]`` to ``[(10, 1), (3, 4)]``, checked against the model's shape.

    Raises:
        ValueError: Naming the bad entry and ``where`` it came from.
    """
    out = []
    for h in heads:
        if isinstance(h, str):
            parts = h.split(".")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"{where}: {h!r} is not LAYER.HEAD (e.g. 10.1)")
            h = (int(parts[0]), int(parts[1]))
        layer, head = int(h[0]), int(h[1])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"{where}: head {layer}.{head} is outside the model ({n_layers} layers x {n_heads} heads)")
        out.append((layer, head))
    return out


# -- batched forwards ---------------------------------------------------------------------------------------
def pad_batch(
    seqs: Sequence[Sequence[int]], types: Sequence[Sequence[int]], length: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, token_type_ids, attention_mask)``, each ``[n, length]``, right-padded."""
    n = len(seqs)
    ids = np.full((n, length), pad_id, np.int32)
    tt = np.zeros((n, length), np.int32)
    mask = np.zeros((n, length), np.int32)
    for i, (s, t) in enumerate(zip(seqs, types, strict=True)):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than the padded length {length}")
        ids[i, : len(s)] = s
        tt[i, : len(t)] = t
        mask[i, : len(s)] = 1
    return ids, tt, mask


def length_buckets(
    lengths: Sequence[int], buckets: Sequence[int] = (32, 64, 96, 128, 192, 256, 384, 512)
) -> dict[int, list[int]]:
    """Indices grouped by the smallest bucket length that holds them (longer ones get their own length)."""
    out: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        b = next((b for b in sorted(buckets) if b >= n), int(n))
        out.setdefault(b, []).append(i)
    return out


def _fill(chunk: list[int], batch_size: int) -> list[int]:
    """``chunk`` repeated at its end up to a power of two (at most ``batch_size``): few distinct batch shapes,
    so few compiles, without running a full batch for a handful of inputs."""
    size = min(batch_size, 1 << (len(chunk) - 1).bit_length())
    return chunk + [chunk[-1]] * (max(size, len(chunk)) - len(chunk))


@functools.partial(jax.jit, static_argnames=("with_score",))
def _attention_to(model: HookedEncoder, ids, tt, mask, targets, *, with_score: bool):
    out = model(ids, tt, mask, capture=("pattern",))
    mass = jnp.einsum("blhqk,bqk->blhq", out.cache["pattern"], targets)
    if not with_score:
        return mass, None
    return mass, out.score if out.score is not None else out.embedding


def attention_to(
    model: HookedEncoder,
    seqs: Sequence[Sequence[int]],
    types: Sequence[Sequence[int]],
    targets: Sequence[np.ndarray],
    *,
    batch_size: int = DEFAULT_BATCH,
    with_score: bool = False,
) -> tuple[Float[np.ndarray, "n layer head qpos"], np.ndarray | None]:
    """Attention mass from every query (destination) position to a weighted set of key positions.

    ``mass[i, l, h, q] = sum_k pattern[i, l, h, q, k] * targets[i][q, k]``: with ``targets[i][q]`` the
    indicator of the document positions this is the paper's soft TF of query position ``q``; with the
    indicator of the positions that hold the same token it is the attention to exact matches.

    Args:
        model: Any encoder; bi-encoders run their trunk on the given sequences.
        seqs: Token ids per input (unpadded).
        types: Token type ids per input.
        targets: Per input a ``[len, len]`` weight matrix (rows: query positions, columns: keys).
        batch_size: Inputs per jitted forward (batches are padded to this size, so each length bucket
            compiles once).
        with_score: Also return the score (cross-encoder logits) or pooled embedding (bi-encoders).

    Returns:
        ``(mass, score)``: ``mass`` is ``[n, layer, head, max_len]`` (zero beyond each input's length);
        ``score`` is ``[n]`` / ``[n, d_model]`` or None.
    """
    n = len(seqs)
    if not (len(types) == n == len(targets)):
        raise ValueError(f"attention_to: {n} sequences, {len(types)} type lists, {len(targets)} target matrices")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    max_len = max((len(s) for s in seqs), default=0)
    mass = np.zeros((n, L, H, max_len), np.float32)
    score = None
    for length, idx in length_buckets([len(s) for s in seqs]).items():
        if length > model.cfg.n_ctx:
            raise ValueError(f"an input has {length} tokens, more than the model's n_ctx={model.cfg.n_ctx}")
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            full = _fill(chunk, batch_size)
            ids, tt, msk = pad_batch([seqs[i] for i in full], [types[i] for i in full], length)
            tg = np.zeros((len(full), length, length), np.float32)
            for j, i in enumerate(full):
                t = np.asarray(targets[i], np.float32)
                if t.shape != (len(seqs[i]), len(seqs[i])):
                    raise ValueError(f"targets[{i}] has shape {t.shape}; expected {(len(seqs[i]),) * 2}")
                tg[j, : t.shape[0], : t.shape[1]] = t
            m, s = _attention_to(
                model, jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(msk), jnp.asarray(tg), with_score=with_score
            )
            m = np.asarray(m)[: len(chunk)]
            for j, i in enumerate(chunk):
                mass[i, :, :, : min(length, max_len)] = m[j, :, :, :max_len]
            if with_score:
                s = np.asarray(s)[: len(chunk)]
                if score is None:
                    score = np.zeros((n, *s.shape[1:]), np.float32)
                score[chunk] = s
    return mass, score


@jax.jit
def _forward_score(model: HookedEncoder, ids, tt, mask):
    out = model(ids, tt, mask)
    return out.score if out.score is not None else out.embedding


def encode_batched(
    model: HookedEncoder,
    seqs: Sequence[Sequence[int]],
    types: Sequence[Sequence[int]] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    forward=None,
) -> np.ndarray:
    """Scores (cross-encoders) or pooled embeddings (bi-encoders) of token sequences, batched by length.

    Args:
        forward: A jitted ``f(model, ids, tt, mask)`` to use instead of the plain forward (e.g. with an
            embedding edit applied).
    """
    forward = forward or _forward_score
    types = types if types is not None else [[0] * len(s) for s in seqs]
    out = None
    for length, idx in length_buckets([len(s) for s in seqs]).items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            full = _fill(chunk, batch_size)
            ids, tt, msk = pad_batch([seqs[i] for i in full], [types[i] for i in full], length)
            s = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(msk)))[: len(chunk)]
            if out is None:
                out = np.zeros((len(seqs), *s.shape[1:]), np.float32)
            out[chunk] = s
    return out if out is not None else np.zeros((0,), np.float32)


def model_scores(
    model: HookedEncoder,
    tokenizer,
    query_pieces: Sequence[Sequence[int]],
    doc_pieces: Sequence[Sequence[int]],
    *,
    batch_size: int = DEFAULT_BATCH,
    forward=None,
) -> Float[np.ndarray, " n"]:
    """Relevance scores of (query, document) word-piece pairs.

    Cross-encoders: the raw logit of ``[CLS] q [SEP] d [SEP]``. Bi-encoders: the configured similarity of
    ``[CLS] q [SEP]`` and ``[CLS] d [SEP]`` encoded separately.
    """
    if not model.pair_input:
        wrap = lambda p: [tokenizer.cls_id, *p, tokenizer.sep_id]
        uq = list(dict.fromkeys(tuple(q) for q in query_pieces))
        q_emb = encode_batched(model, [wrap(q) for q in uq], batch_size=batch_size, forward=forward)
        d_emb = encode_batched(model, [wrap(d) for d in doc_pieces], batch_size=batch_size, forward=forward)
        pos = {q: i for i, q in enumerate(uq)}
        qe = q_emb[[pos[tuple(q)] for q in query_pieces]]
        return np.asarray(model.similarity(jnp.asarray(qe), jnp.asarray(d_emb)))
    seqs, types = (
        zip(*(tokenizer.pair_ids(q, d) for q, d in zip(query_pieces, doc_pieces, strict=True)), strict=True)
        if query_pieces
        else ((), ())
    )
    return encode_batched(model, list(seqs), list(types), batch_size=batch_size, forward=forward)


# -- statistics ---------------------------------------------------------------------------------------------
def mean_ci(values: np.ndarray, axis: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware mean and Student-t confidence interval along ``axis``.

    Returns:
        ``(mean, lo, hi)``; NaN where fewer than one value is finite; ``lo == hi == mean`` for one value.
    """
    from scipy import stats

    v = np.moveaxis(np.asarray(values, np.float64), axis, 0)
    ok = np.isfinite(v)
    n = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(ok, v, 0).sum(0) / np.maximum(n, 1), np.nan)
        var = np.where(ok, (v - mean) ** 2, 0).sum(0) / np.maximum(n - 1, 1)
        half = stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * np.sqrt(var / np.maximum(n, 1))
    half = np.where(n > 1, half, 0.0)
    return mean, mean - half, mean + half


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two vectors (NaN if either is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc**2).sum() * (yc**2).sum()))
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


# -- JSON output --------------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays to Python; NaN and infinities to None (JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, result: dict) -> Path:
    """Writes an analysis result atomically (a temporary file renamed into place).

    Raises:
        ValueError: If the result has no ``"analysis"`` or ``"model"`` key (the report's contract).
    """
    for key in ("analysis", "model"):
        if key not in result:
            raise ValueError(f"analysis result for {path} has no {key!r} key")
    text = json.dumps(to_jsonable(result), indent=1, allow_nan=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def model_label(lm_or_model) -> str:
    """A model description for the ``"model"`` field: the folder of a `LoadedModel`, else the class name."""
    folder = getattr(lm_or_model, "folder", None)
    if folder is not None:
        return str(folder)
    return type(lm_or_model).__name__


def unwrap(lm_or_model) -> tuple[HookedEncoder, Any]:
    """``(model, tokenizer)`` of a `LoadedModel`, or ``(model, None)`` of a bare model."""
    model = getattr(lm_or_model, "model", lm_or_model)
    return model, getattr(lm_or_model, "tokenizer", None)


__all__ = [
    "attention_to",
    "encode_batched",
    "head_name",
    "length_buckets",
    "mean_ci",
    "model_label",
    "model_scores",
    "pad_batch",
    "parse_head_names",
    "pearson_r",
    "to_jsonable",
    "unwrap",
    "write_json",
]


# -- tokenised (query, document) inputs with token types ------------------------------------------------------
class PairInputs:
    """Tokenised ``[CLS] q [SEP] d [SEP]`` inputs with the paper's token types, at natural length (no fillers).

    Attributes:
        ids: Token ids per input.
        types: Segment ids per input.
        token_types: Paper token type per position (`jaxmech.data.token_types`; the whole document is
            unperturbed, so ``Dinj`` only appears for ``changed`` positions given at construction).
        q_len: Query word pieces per input.
        doc_pieces: Document word pieces per input.
    """

    def __init__(
        self,
        tokenizer,
        queries: Sequence[str],
        docs: Sequence[str],
        terms: Sequence[str | None],
        *,
        changed: Sequence[Sequence[int]] | None = None,
        max_length: int | None = None,
    ):
        from jaxmech.data.token_types import assign_token_types, word_pieces_with_words

        if not (len(queries) == len(docs) == len(terms)):
            raise ValueError(f"{len(queries)} queries, {len(docs)} documents, {len(terms)} terms")
        texts = list(dict.fromkeys([*queries, *docs, *[t for t in terms if t]]))
        wp = dict(zip(texts, word_pieces_with_words(tokenizer, texts), strict=True)) if texts else {}
        limit = max_length or tokenizer.max_length
        self.ids, self.types, self.token_types, self.q_len, self.doc_pieces, self.kept = [], [], [], [], [], []
        for i, (q, d, t) in enumerate(zip(queries, docs, terms, strict=True)):
            qw, dw = wp[q], wp[d]
            if not qw.ids or not dw.ids:
                raise ValueError(f"input {i}: empty query or document ({q!r}, {d[:40]!r})")
            if len(qw.ids) + len(dw.ids) + 3 > limit:
                continue  # never truncated: a cut document is not the document
            ids, tt = tokenizer.pair_ids(qw.ids, dw.ids)
            term_words = wp[t].words if t else None
            self.token_types.append(assign_token_types(qw, dw, term_words, changed[i] if changed else ()))
            self.ids.append(ids)
            self.types.append(tt)
            self.q_len.append(len(qw.ids))
            self.doc_pieces.append(list(dw.ids))
            self.kept.append(i)

    @classmethod
    def from_pieces(
        cls, tokenizer, query_pieces: Sequence[Sequence[int]], doc_pieces: Sequence[Sequence[int]]
    ) -> PairInputs:
        """Inputs from word pieces, without a selected term (query pieces ``Qsub``, document ``Dother``)."""
        self = cls.__new__(cls)
        self.ids, self.types, self.token_types, self.q_len, self.doc_pieces = [], [], [], [], []
        for q, d in zip(query_pieces, doc_pieces, strict=True):
            ids, tt = tokenizer.pair_ids(list(q), list(d))
            self.ids.append(ids)
            self.types.append(tt)
            self.token_types.append(["CLS", *["Qsub"] * len(q), "SEP1", *["Dother"] * len(d), "SEP2"])
            self.q_len.append(len(q))
            self.doc_pieces.append(list(d))
        self.kept = list(range(len(self.ids)))
        return self

    def __len__(self) -> int:
        return len(self.ids)

    def targets(self, src: Sequence[str], dst: Sequence[str]) -> list[np.ndarray]:
        """Per input, the ``[len, len]`` indicator of (row of a ``src`` type, key of a ``dst`` type)."""
        out = []
        for types in self.token_types:
            t = np.asarray(types)
            out.append(np.outer(np.isin(t, src), np.isin(t, dst)).astype(np.float32))
        return out


def subset_source(
    source, *, qids: Sequence[str] | None = None, n_queries: int | None = None, docs_per_query: int | None = None
):
    """A `jaxmech.data.records.DiagnosticSource` restricted to some queries and their first documents.

    Args:
        source: The full source.
        qids: Keep only these queries (in the source's order); unknown ids are an error.
        n_queries: Keep the first this many (after ``qids``).
        docs_per_query: Keep the first this many documents of each query.

    Raises:
        ValueError: Naming query ids that the source does not have.
    """
    import dataclasses

    order = list(source.queries)
    if qids is not None:
        missing = [q for q in qids if q not in source.queries]
        if missing:
            raise ValueError(f"qids {missing[:5]} are not in the source {source.name}")
        wanted = set(qids)
        order = [q for q in order if q in wanted]
    order = order[:n_queries]
    keep = set(order)
    pick = lambda table: {q: v for q, v in table.items() if q in keep}
    docs = {q: dict(list(d.items())[:docs_per_query]) for q, d in source.docs.items() if q in keep}
    return dataclasses.replace(
        source,
        queries=pick(source.queries),
        terms=pick(source.terms),
        docs=docs,
        related=pick(source.related),
        pronouns=pick(source.pronouns),
        answers=pick(source.answers),
    )


def read_qids(path: str | os.PathLike) -> list[str]:
    """Query ids, one per line (blank lines and ``#`` comments skipped; the first column of a TSV).

    Raises:
        FileNotFoundError / ValueError: Naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--qids file {path} does not exist")
    out = [
        line.split("\t")[0].strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not out:
        raise ValueError(f"--qids file {path} lists no query ids")
    return out
