"""The IDF-aligned initialisation of the embedding matrix (paper-notes §9 F.2), with the SVD sign of §6.

**Concept.** The paper finds that the first left singular vector ``U_0`` of the word-embedding matrix
``W_E = U diag(S) Vt`` encodes inverse document frequency, with the sign convention ``-U_0 ∝ IDF`` (§6).
Appendix F.2 uses this as an initialisation for embeddings-only fine-tuning: replace ``U_0`` by the
(negated) IDF of the target collection, rescaled to ``U_0``'s own scale, and rebuild ``W_E``.

**Recipe** (`idf_aligned_embedding`), for ``W_E: [d_vocab, d_model]`` and a per-id IDF vector ``idf``:

1. ``U, S, Vt = svd(W_E)`` (thin, float64).
2. Orient: if ``corr(U_0, idf) > 0`` over the ids that have an IDF, flip ``U_0`` and ``Vt[0]`` together
   (``W_E`` is unchanged) so that ``-U_0 ∝ IDF`` as in §6. SVD signs are arbitrary; without this the new
   ``U_0`` could be written with the opposite meaning of the old one.
3. ``x = -idf`` over the **whole** vocabulary (ids without an IDF hold the default, as the notebook's
   ``idf_dict.get(token, 1.0)`` does); ``z = (x - mean(x)) / std(x)``; ``new = z * std(U_0) + mean(U_0)``.
4. ``U_0' = new`` on ids that have an IDF; ids without one (value equal to ``default``, 1.0 in the notebook,
   or outside an explicit ``known`` mask) keep their ``U_0``.
5. ``W_E' = U' diag(S) Vt``. Only the first component changes, so this is computed as the rank-one update
   ``W_E + S_0 (U_0' - U_0) Vt[0]``, which leaves the rows of tokens without an IDF bit-for-bit unchanged.

Everything else in the model is untouched. IDF vectors come from `jaxmech.data.idf` (`word_idf` +
`vocab_idf`, the paper's ``tokenizer.decode([id])`` lookup) or a TSV table (`load_idf_tsv`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Bool, Float


@dataclasses.dataclass
class IdfInitReport:
    """What `idf_aligned_embedding` did.

    Attributes:
        flipped: Whether the SVD's ``U_0`` was flipped to satisfy ``corr(U_0, idf) < 0``.
        corr_before: Pearson ``corr(U_0, idf)`` over ids with an IDF, after orientation (negative).
        corr_after: The same for the new ``U_0`` (-1 up to rounding).
        n_replaced: Ids whose ``U_0`` entry was replaced.
        u0_mean: Mean of the (oriented) ``U_0`` over the vocabulary.
        u0_std: Its standard deviation.
    """

    flipped: bool
    corr_before: float
    corr_after: float
    n_replaced: int
    u0_mean: float
    u0_std: float


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def oriented_svd(
    W_E: Float[np.ndarray, "vocab d"], idf: Float[np.ndarray, " vocab"], known: Bool[np.ndarray, " vocab"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Thin SVD of ``W_E`` (float64) with ``U_0`` oriented so that ``corr(U_0[known], idf[known]) <= 0``.

    Returns:
        ``(U, S, Vt, flipped)``; ``U @ diag(S) @ Vt == W_E`` up to rounding either way.
    """
    U, S, Vt = np.linalg.svd(np.asarray(W_E, np.float64), full_matrices=False)
    flipped = _corr(U[known, 0], idf[known]) > 0
    if flipped:
        U[:, 0] *= -1.0
        Vt[0] *= -1.0
    return U, S, Vt, flipped


def idf_aligned_u0(
    u0: Float[np.ndarray, " vocab"], idf: Float[np.ndarray, " vocab"], known: Bool[np.ndarray, " vocab"]
) -> Float[np.ndarray, " vocab"]:
    """Steps 3-4 of the recipe: standardized ``-idf`` rescaled to ``u0``'s mean and std where ``known``."""
    x = -np.asarray(idf, np.float64)
    sd = x.std()
    if sd == 0:
        raise ValueError("the IDF vector is constant; nothing to align U_0 with")
    new = (x - x.mean()) / sd * u0.std() + u0.mean()
    return np.where(known, new, u0)


def idf_aligned_embedding(
    W_E: Float[np.ndarray, "vocab d"],
    idf: Float[np.ndarray, " vocab"],
    *,
    known: Bool[np.ndarray, " vocab"] | None = None,
    default: float = 1.0,
) -> tuple[Float[np.ndarray, "vocab d"], IdfInitReport]:
    """The IDF-aligned embedding matrix (the module's recipe).

    Args:
        W_E: ``[d_vocab, d_model]`` word embeddings.
        idf: ``[d_vocab]`` IDF per id, ``default`` where unknown.
        known: Ids that have an IDF; default ``idf != default``.
        default: The value standing for "no IDF".

    Returns:
        ``(W_E', report)`` with ``W_E'`` in ``W_E``'s dtype.

    Raises:
        ValueError: On mismatched shapes or when no id has an IDF.
    """
    W = np.asarray(W_E)
    idf = np.asarray(idf, np.float64)
    if idf.shape != (W.shape[0],):
        raise ValueError(f"idf has shape {idf.shape}, expected ({W.shape[0]},) for W_E of shape {W.shape}")
    known = (idf != default) if known is None else np.asarray(known, bool)
    if not known.any():
        raise ValueError("no token has an IDF (all equal the default); nothing to align")
    U, S, Vt, flipped = oriented_svd(W, idf, known)
    u0 = U[:, 0]
    new_u0 = idf_aligned_u0(u0, idf, known)
    delta = (new_u0 - u0) * S[0]
    W_new = W.astype(np.float64) + np.outer(delta, Vt[0])
    W_new[~known] = W[~known]
    report = IdfInitReport(
        bool(flipped),
        _corr(u0[known], idf[known]),
        _corr(new_u0[known], idf[known]),
        int(known.sum()),
        float(u0.mean()),
        float(u0.std()),
    )
    return W_new.astype(W.dtype), report


def apply_idf_init(model, idf: Float[np.ndarray, " vocab"], *, known=None, default: float = 1.0):
    """A copy of ``model`` whose ``embed.W_E`` is IDF-aligned (`idf_aligned_embedding`); returns
    ``(model, report)``. Every other parameter is shared unchanged."""
    import jax.numpy as jnp
    from flax import nnx

    W_new, report = idf_aligned_embedding(np.asarray(model.embed.W_E[...]), idf, known=known, default=default)
    graphdef, state = nnx.split(model)
    new = nnx.merge(graphdef, state)
    new.embed.W_E = nnx.Param(jnp.asarray(W_new))
    return new, report


def vocab_idf_vector(
    table: dict[str, float], tokenizer, *, granularity: str = "word", default: float = 1.0
) -> tuple[Float[np.ndarray, " vocab"], Bool[np.ndarray, " vocab"]]:
    """``(idf, known)`` per vocabulary id from a term table: ``idf`` holds ``default`` where the table has no
    entry. ``granularity="word"`` looks up ``tokenizer.decode([id])`` (notes §6), ``"wordpiece"`` the
    vocabulary string (``"##ing"``)."""
    from jaxmech.data.idf import vocab_idf_known

    keys = {"word": "decode", "wordpiece": "token"}
    if granularity not in keys:
        raise ValueError(f"granularity={granularity!r}; choose 'word' or 'wordpiece'")
    return vocab_idf_known(table, tokenizer, key=keys[granularity], default=default)
