"""The IDF direction of the word-embedding matrix (paper-notes §6): SVD, correlation with IDF, sign, centring.

The paper takes ``U, S, Vt = svd(W_E)`` (``W_E: [vocab, d_model]``) and correlates each left singular vector
``U[:, k]`` (k < 50) with a per-id IDF vector; it finds the first, ``U_0``, correlated with IDF and its code
uses **-U_0 as the IDF direction**. Singular vectors have an arbitrary sign, so here every component is
oriented so that its correlation with IDF is <= 0 for ``U_0`` (the convention) and, for ``k > 0``, with
``sum(Vt[k]) > 0`` (the paper's measure ``corr(U_k * sum(Vt[k]), idf)``), so signs are reproducible.

**Per-id IDF rules** (`vocab_idf`):

* ``"word"``: the paper's word-to-piece rule: ``idf[i] = table.get(decode([i]), 0)`` with a word-level
  table; word pieces (``##x``), special tokens and words missing from the corpus get 0, and the correlation
  is taken over ids with ``idf != 0``;
* ``"word_first20k"``: the same, restricted to ids below 20,000 (the paper's ``U[:20000]``);
* ``"wordpiece"``: a word-piece-level table keyed by the vocabulary string, so ``##`` pieces have an IDF.

**The mean-direction confound.** Embedding matrices are not centred: a large shared component (the mean
row) dominates the first singular vector. For all-MiniLM-L6-v2 the first right singular vector has cosine
0.78 with the mean embedding, so ``U_0`` is close to each row's projection on the mean, which itself
correlates with frequency. The *centred* variant takes the SVD of ``W_E - mean(W_E)``: a correlation that
survives centring is an IDF signal beyond the mean direction. Both are reported.

**IDF by streaming a collection** (`stream_idf`): document frequencies are accumulated chunk by chunk over
an iterable of texts (`iter_collection` reads an MS MARCO ``pid<TAB>text`` TSV or a JSONL corpus line by
line), so a collection never has to fit in memory; the formulas are `jaxmech.data.idf.IDF_FORMULAS`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
from jaxtyping import Float

from jaxmech.analysis.common import model_label, pearson_r, unwrap
from jaxmech.data.idf import idf_values
from jaxmech.data.records import DataError

IDF_RULES = ("word", "word_first20k", "wordpiece")
FIRST_IDS = 20000


# -- IDF from a collection ----------------------------------------------------------------------------------
def iter_collection(path: str | Path) -> Iterator[str]:
    """Texts of a collection file, one at a time: ``pid<TAB>text`` (or ``pid<TAB>title<TAB>text``) TSV, or
    JSONL with ``text`` (and optional ``title``).

    Raises:
        DataError: Naming the file and line of a malformed record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"collection {path} does not exist")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, f"line {n}", f"not JSON: {e}") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise DataError(path, f"line {n}", "expected an object with a 'text' string")
                yield f"{obj.get('title') or ''} {obj['text']}".strip()
            else:
                cols = line.split("\t")
                if len(cols) not in (2, 3):
                    raise DataError(path, f"line {n}", f"expected 2 or 3 tab-separated columns, got {len(cols)}")
                yield " ".join(cols[1:]).strip()


def stream_idf(
    texts: Iterable[str], tokenizer, *, level: str = "word", formula: str = "lucene", chunk_size: int = 4096
) -> dict[str, float]:
    """IDF of every term of a stream of documents, tokenised in chunks.

    Args:
        texts: Documents (any iterable; consumed once).
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        level: ``"word"`` (the tokenizer's normalised words) or ``"wordpiece"`` (vocabulary strings).
        formula: One of `jaxmech.data.idf.IDF_FORMULAS`.
        chunk_size: Documents tokenised per call.

    Returns:
        ``term -> idf``.

    Raises:
        ValueError: On an unknown level, or an empty stream.
    """
    from jaxmech.data.token_types import word_piece_ids, word_pieces_with_words

    if level not in ("word", "wordpiece"):
        raise ValueError(f"level={level!r}; choose 'word' or 'wordpiece'")
    df: Counter = Counter()
    n = 0
    it = iter(texts)
    while chunk := list(itertools.islice(it, chunk_size)):
        if level == "word":
            for wp in word_pieces_with_words(tokenizer, chunk):
                df.update(set(wp.words))
        else:
            for ids in word_piece_ids(tokenizer, chunk):
                df.update(set(ids))
        n += len(chunk)
    if n == 0:
        raise ValueError("stream_idf: the collection is empty")
    terms = list(df)
    vals = idf_values(np.array([df[t] for t in terms]), n, formula)
    if level == "wordpiece":
        terms = tokenizer.hf.convert_ids_to_tokens(terms)
    return {t: float(v) for t, v in zip(terms, vals, strict=True)}


def vocab_idf_rules(
    word_table: Mapping[str, float] | None, piece_table: Mapping[str, float] | None, tokenizer
) -> dict[str, np.ndarray]:
    """Per-id IDF vectors for each rule of `IDF_RULES` whose table is given (see the module docstring)."""
    from jaxmech.data.idf import vocab_idf

    out = {}
    if word_table is not None:
        v = vocab_idf(word_table, tokenizer, key="decode")
        out["word"] = v
        first = v.copy()
        first[FIRST_IDS:] = 0.0
        out["word_first20k"] = first
    if piece_table is not None:
        out["wordpiece"] = vocab_idf(piece_table, tokenizer, key="token")
    return out


# -- SVD and correlations -----------------------------------------------------------------------------------
@dataclasses.dataclass
class EmbeddingSVD:
    """An oriented SVD of an embedding matrix.

    Attributes:
        U: ``[vocab, rank]`` left singular vectors (columns oriented, see the module docstring).
        S: ``[rank]`` singular values, descending.
        Vt: ``[rank, d_model]`` right singular vectors (rows flipped with ``U``'s columns).
        mean: ``[d_model]`` the row mean that was subtracted (zeros if not centred).
    """

    U: np.ndarray
    S: np.ndarray
    Vt: np.ndarray
    mean: np.ndarray

    def reconstruct(self) -> np.ndarray:
        """``U diag(S) Vt + mean``."""
        return (self.U * self.S) @ self.Vt + self.mean


def embedding_svd(
    W_E: Float[np.ndarray, "vocab d_model"], *, centered: bool = False, idf: Float[np.ndarray, " vocab"] | None = None
) -> EmbeddingSVD:
    """SVD of ``W_E`` (or ``W_E - mean``) with reproducible signs.

    Args:
        W_E: The word-embedding matrix.
        centered: Subtract the mean row first.
        idf: If given, ``U_0`` is oriented so that ``corr(U_0, idf) <= 0`` over ids with ``idf != 0`` (the
            paper's -U_0 ∝ IDF); otherwise so that ``sum(Vt[0]) > 0`` like the other components.

    Raises:
        ValueError: If ``W_E`` is not 2-D or ``idf`` does not have one entry per row.
    """
    W = np.asarray(W_E, np.float64)
    if W.ndim != 2:
        raise ValueError(f"W_E must be [vocab, d_model]; got shape {W.shape}")
    mean = W.mean(0) if centered else np.zeros(W.shape[1])
    U, S, Vt = np.linalg.svd(W - mean, full_matrices=False)
    sign = np.where(Vt.sum(1) < 0, -1.0, 1.0)
    if idf is not None:
        idf = np.asarray(idf, np.float64)
        if idf.shape != (W.shape[0],):
            raise ValueError(f"idf has shape {idf.shape}; expected ({W.shape[0]},), one value per vocabulary id")
        nz = idf != 0
        if nz.sum() > 1 and pearson_r(U[nz, 0], idf[nz]) > 0:
            sign[0] = -1.0
        elif nz.sum() > 1:
            sign[0] = 1.0
    return EmbeddingSVD(U * sign, S, Vt * sign[:, None], mean)


def component_correlations(U: np.ndarray, idf: np.ndarray, *, n_components: int = 50) -> np.ndarray:
    """``[n_components]`` Pearson r of ``U[:, k]`` with ``idf`` over ids where ``idf != 0``."""
    idf = np.asarray(idf, np.float64)
    nz = idf != 0
    if nz.sum() < 3:
        raise ValueError(f"only {int(nz.sum())} vocabulary ids have a non-zero IDF; cannot correlate")
    k = min(n_components, U.shape[1])
    return np.array([pearson_r(U[nz, i], idf[nz]) for i in range(k)])


def u0_idf_scale(U0: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """The paper's ``U0_idf``: ``U_0`` standardised to the mean and std of ``idf`` over the full vocabulary
    (zeros included), ``(U0 - mean(U0)) / std(U0) * std(idf) + mean(idf)``. The IDF feature is its negative."""
    U0, idf = np.asarray(U0, np.float64), np.asarray(idf, np.float64)
    return (U0 - U0.mean()) / U0.std() * idf.std() + idf.mean()


def mean_direction_cosine(W_E: np.ndarray, svd: EmbeddingSVD) -> float:
    """``|cos(Vt[0], mean row)|``: how much the first singular direction is the mean embedding."""
    m = np.asarray(W_E, np.float64).mean(0)
    v = svd.Vt[0]
    return float(abs(v @ m) / (np.linalg.norm(v) * np.linalg.norm(m)))


def idf_svd_analysis(
    W_E: Float[np.ndarray, "vocab d_model"],
    idf: Mapping[str, np.ndarray] | np.ndarray,
    *,
    main_rule: str | None = None,
    n_components: int = 50,
    scatter_size: int = 2000,
    seed: int = 0,
    model: str = "",
) -> dict:
    """Correlation of the embedding matrix's singular vectors with IDF, raw and centred.

    Args:
        W_E: ``[vocab, d_model]`` word embeddings.
        idf: Per-id IDF vectors by rule name (`vocab_idf_rules`), or one vector (named ``"idf"``).
        main_rule: The rule of the headline numbers (default: ``"word"`` if present, else the first).
        n_components: Components to correlate (the paper: 50).
        scatter_size: Tokens sampled for the ``scatter`` field (seeded).
        seed: Seed of the scatter sample.
        model: Model label for the JSON.

    Returns:
        The ``idf_svd`` JSON object: ``u0_idf_pearson`` (raw, oriented: negative when -U_0
        ∝ IDF), ``u0_idf_pearson_centered``, ``u0_idf_pearson_sign_free`` (``corr(U_0 * sum(Vt[0]), IDF)``,
        independent of the SVD's sign), ``u0_mean_cosine``, ``components`` [{k, pearson,
        pearson_centered}], ``variants`` {rule: pearson} (raw and ``<rule>_centered``), ``scatter``,
        ``strongest_component`` and the singular values.
    """
    rules = dict(idf) if isinstance(idf, Mapping) else {"idf": np.asarray(idf)}
    if not rules:
        raise ValueError("idf_svd_analysis: no IDF vector given")
    main = main_rule or ("word" if "word" in rules else next(iter(rules)))
    if main not in rules:
        raise ValueError(f"main_rule={main!r} is not among the IDF rules {sorted(rules)}")
    W = np.asarray(W_E, np.float64)
    raw = embedding_svd(W, idf=rules[main])
    cen = embedding_svd(W, centered=True, idf=rules[main])
    r_raw = component_correlations(raw.U, rules[main], n_components=n_components)
    r_cen = component_correlations(cen.U, rules[main], n_components=n_components)
    variants = {}
    for name, v in rules.items():
        variants[name] = component_correlations(raw.U, v, n_components=1)[0]
        variants[f"{name}_centered"] = component_correlations(cen.U, v, n_components=1)[0]
    nz = np.flatnonzero(rules[main] != 0)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(nz, size=min(scatter_size, len(nz)), replace=False))
    return {
        "analysis": "idf_svd",
        "model": model,
        "main_rule": main,
        "n_nonzero_idf": int(len(nz)),
        "u0_idf_pearson": r_raw[0],
        "u0_idf_pearson_centered": r_cen[0],
        # the paper's sign-free measure corr(U_0 * sum(Vt[0]), IDF): unlike u0_idf_pearson (oriented by IDF,
        # so <= 0 by construction) its sign is a property of W_E, and can come out either way
        "u0_idf_pearson_sign_free": float(np.sign(raw.Vt[0].sum()) * r_raw[0]),
        "u0_mean_cosine": mean_direction_cosine(W, raw),
        "strongest_component": int(np.nanargmax(np.abs(r_raw))),
        "strongest_component_centered": int(np.nanargmax(np.abs(r_cen))),
        "components": [{"k": k, "pearson": r_raw[k], "pearson_centered": r_cen[k]} for k in range(len(r_raw))],
        "variants": variants,
        "singular_values": raw.S[:n_components],
        "singular_values_centered": cen.S[:n_components],
        "sign_convention": "U_0 oriented so that corr(U_0, IDF) <= 0 (the paper's -U_0 ∝ IDF)",
        "scatter": {"token_id": sample, "u0": raw.U[sample, 0], "idf": rules[main][sample]},
    }


def base_comparison(
    W_E: Float[np.ndarray, "vocab d_model"],
    W_base: Float[np.ndarray, "vocab d_model"],
    idf: Float[np.ndarray, " vocab"],
    *,
    base: str = "",
) -> dict:
    """U_0 of a fine-tuned model beside its base model's (is the IDF direction learned in fine-tuning, or
    inherited from pre-training?).

    Returns:
        ``{"base", "w_e_relative_difference" (||W - W_base|| / ||W_base||), "u0_abs_cosine" (|cos(U_0, U_0 of
        the base)|), "base_u0_idf_pearson", "base_u0_idf_pearson_sign_free"}``.

    Raises:
        ValueError: If the two matrices differ in shape.
    """
    W, B = np.asarray(W_E, np.float64), np.asarray(W_base, np.float64)
    if W.shape != B.shape:
        raise ValueError(f"base model embedding {B.shape} differs from the model's {W.shape}: not its base")
    ft, bs = embedding_svd(W, idf=idf), embedding_svd(B, idf=idf)
    r = component_correlations(bs.U, idf, n_components=1)[0]
    return {
        "base": base,
        "w_e_relative_difference": float(np.linalg.norm(W - B) / np.linalg.norm(B)),
        "u0_abs_cosine": float(abs(ft.U[:, 0] @ bs.U[:, 0])),
        "base_u0_idf_pearson": float(r),
        "base_u0_idf_pearson_sign_free": float(np.sign(bs.Vt[0].sum()) * r),
    }


def idf_svd(
    lm,
    *,
    collection: str | Path | Iterable[str] | None = None,
    texts: Iterable[str] | None = None,
    word_table: Mapping[str, float] | None = None,
    piece_table: Mapping[str, float] | None = None,
    formula: str = "lucene",
    n_components: int = 50,
    base=None,
    **kw,
) -> dict:
    """`idf_svd_analysis` of a loaded model, with IDF tables given or streamed from a collection; with
    ``base`` (its pre-trained model, loaded or a path/``"packaged"``), `base_comparison` under ``"base"``.

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel` (needs its tokenizer).
        collection: A collection file (`iter_collection`) or an iterable of texts, streamed once per level.
        texts: Same as an iterable ``collection`` (kept for symmetry with `jaxmech.data.idf`).
        word_table: A word-level ``term -> idf`` table (instead of streaming).
        piece_table: A word-piece-level table.
        formula: IDF formula when streaming.
        n_components: Components to correlate.
        **kw: Passed to `idf_svd_analysis`.

    Raises:
        ValueError: If neither tables nor a collection are given, or the model has no tokenizer.
    """
    model, tok = unwrap(lm)
    if tok is None:
        raise ValueError("idf_svd needs the model's tokenizer (to map IDF words to vocabulary ids)")
    src = collection if collection is not None else texts
    if word_table is None and piece_table is None and src is None:
        raise ValueError("idf_svd needs an IDF table or a collection to stream IDF from")

    def stream():
        return iter_collection(src) if isinstance(src, (str, Path)) else iter(src)

    if src is not None and not isinstance(src, (str, Path)):
        src = list(src)  # an iterator can be consumed only once; two levels read it twice
    if word_table is None and src is not None:
        word_table = stream_idf(stream(), tok, level="word", formula=formula)
    if piece_table is None and src is not None:
        piece_table = stream_idf(stream(), tok, level="wordpiece", formula=formula)
    rules = vocab_idf_rules(word_table, piece_table, tok)
    W_E = np.asarray(model.embed.W_E[...])
    if W_E.shape[0] != len(next(iter(rules.values()))):
        raise ValueError(f"the embedding has {W_E.shape[0]} rows but the tokenizer {len(tok.hf)} ids")
    out = idf_svd_analysis(W_E, rules, n_components=n_components, model=model_label(lm), **kw)
    out["idf_formula"] = formula
    if base is not None:
        from jaxmech.hf.loading import LoadedModel, load_model

        blm = base if isinstance(base, LoadedModel) else load_model(base)
        bmodel, _ = unwrap(blm)
        main = out["main_rule"]
        out["base"] = base_comparison(W_E, np.asarray(bmodel.embed.W_E[...]), rules[main], base=model_label(blm))
    return out


__all__ = [
    "IDF_RULES",
    "base_comparison",
    "EmbeddingSVD",
    "component_correlations",
    "embedding_svd",
    "idf_svd",
    "idf_svd_analysis",
    "iter_collection",
    "mean_direction_cosine",
    "stream_idf",
    "u0_idf_scale",
    "vocab_idf_rules",
]
