"""Background interventions: heads ablated in both runs of a patching sweep (and so in every patched run).

A background is declared as data: one or more `Ablation` s (``Ablation(heads=["9.1", "9.2"], kind="mean")``).
`resolve_background` turns them into a `ResolvedBackground`: a ``[layer, head]`` mask of the ablated heads and
the value each one's ``z`` (or ``result``) is set to, zeros or the dataset mean from a first pass over the pairs.

**How it runs.** A head ablation at ``z`` or ``result`` replaces that head's contribution to ``attn_out`` by a
constant (``value @ W_O[h]``, or ``value`` for ``result``). `ResolvedBackground.fold` writes exactly that into a
copy of the model: ``W_O[l, h]`` set to zero and the constant added to ``b_O[l]``. The folded model computes the
same function as the original model with the `jaxmech.patching.head_sets.HeadAblation` interventions applied
(`ResolvedBackground.interventions`, the definition; the tests check the two agree), so every engine runs it
unchanged: the baseline and perturbed runs, their restart caches (`jaxmech.patching.caches.prepare`), the
restarted patched runs, path patching's frozen runs, attribution gradients and the bi-encoder's query embedding
all see the ablation. One difference is visible in caches only: the folded model's cached ``z`` and ``result``
of an ablated head hold its computed (unused) value, not the ablation value. Patching an ablated head therefore
changes nothing, as with the interventions applied before the patch (the perturbed run's ablated value equals
the baseline's).

**Means** (``kind="mean"``) are computed on the model *without* the background, over every real token
(``attention_mask == 1``; padding never counts) of both inputs of every pair (baseline and perturbed, each pair
counted once whatever the direction; for a bi-encoder the document-only inputs the patched runs read), pooled
over positions: one ``[d_head]`` (``z``) or ``[d_model]`` (``result``) vector per head, the same at every
position. They are stored in ``describe()`` (the result's ``meta["background"]``) with the number of tokens.
In a sweep the means are computed once over all of the sweep's pairs, before the chunks run.

Only models whose blocks hold ``attn.W_O``/``attn.b_O`` (BERT-style `jaxmech.models.bert.HookedEncoder`) or
``W_O``/``b_O`` (ModernBERT; not tested) can be folded. Other interventions (any `jaxmech.interventions.PatchSpec`)
would need hooks inside the restarted engine: `jaxmech.patching.run.run_patching` accepts them as a background
and then runs the families by full forwards (`jaxmech.patching.engines.full_forward`: exact, slower; activation families
of cross-encoders). The command line, sweep configs and ``patch()`` take head ablations only (a PatchSpec's
arrays are not expressible there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmech.patching.receivers import parse_heads

KINDS = ("zero", "mean")
"""How an ablated head's activation is replaced: zeros, or its dataset mean."""
SITES = ("z", "result")
"""Sites a head ablation acts on."""


@dataclasses.dataclass(frozen=True)
class Ablation:
    """Heads ablated in every run of a sweep (declared as data).

    Attributes:
        heads: ``["9.1", (9, 2), ...]`` (stored as ``((layer, head), ...)``).
        kind: ``"zero"`` or ``"mean"`` (the dataset mean; see the module docstring).
        site: ``"z"`` (default, the paper's E1b) or ``"result"``.
    """

    heads: tuple
    kind: str = "zero"
    site: str = "z"

    def __post_init__(self):
        heads = parse_heads(list(self.heads))
        if not heads:
            raise ValueError("an ablation needs at least one head (LAYER.HEAD)")
        dup = sorted({h for h in heads if heads.count(h) > 1})
        if dup:
            raise ValueError(f"ablated heads listed twice: {[f'{l}.{h}' for l, h in dup]}")
        if self.kind not in KINDS:
            raise ValueError(f"ablation kind {self.kind!r}; choose one of {KINDS}")
        if self.site not in SITES:
            raise ValueError(f"ablation site {self.site!r}; choose one of {SITES}")
        object.__setattr__(self, "heads", heads)

    def check(self, n_layers: int, n_heads: int) -> None:
        """Raises ValueError naming a head outside ``n_layers x n_heads``."""
        for layer, head in self.heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(f"ablated head {layer}.{head} is out of range (layers 0..{n_layers - 1}, heads "
                                 f"0..{n_heads - 1})")


def parse_ablation(heads: str | Sequence[str], kind: str = "zero", site: str = "z") -> Ablation:
    """An `Ablation` from the command line's ``"9.1,9.2"`` (or a list of such strings)."""
    items = [heads] if isinstance(heads, str) else list(heads)
    names = [h.strip() for item in items for h in str(item).split(",") if h.strip()]
    return Ablation(tuple(names), kind, site)


def as_ablations(background) -> tuple[Ablation, ...]:
    """``None``, one `Ablation`, a sequence of them or a `ResolvedBackground`, as a tuple of ablations; anything
    else is refused.

    Raises:
        TypeError: For an object that is not an `Ablation` (e.g. a `PatchSpec`, which cannot be folded).
        ValueError: If a head is ablated twice.
    """
    if background is None:
        return ()
    if isinstance(background, ResolvedBackground):
        return background.ablations
    single = isinstance(background, Ablation) or hasattr(background, "apply")  # one ablation or intervention
    items = (background,) if single else tuple(background)
    for a in items:
        if not isinstance(a, Ablation):
            raise TypeError(f"background: {type(a).__name__} is not supported here; give Ablation(heads=..., "
                            "kind=..., site=...) (the command line, sweep configs and patch() take head ablations "
                            "only; run_patching also takes interventions such as PatchSpec, run by full forwards)")
    heads = [h for a in items for h in a.heads]
    dup = sorted({h for h in heads if heads.count(h) > 1})
    if dup:
        raise ValueError(f"background: heads ablated twice: {[f'{l}.{h}' for l, h in dup]}")
    return items


@dataclasses.dataclass
class ResolvedBackground:
    """Ablations with their values: what a run applies.

    Attributes:
        ablations: The declared ablations.
        values: Per site (``"z"``/``"result"``): ``(mask [layer, head], value [layer, head, d])``.
        n_tokens: Tokens the means were averaged over (0 when no ablation is a mean).
    """

    ablations: tuple[Ablation, ...]
    values: dict[str, tuple[np.ndarray, np.ndarray]]
    n_tokens: int = 0

    def interventions(self) -> list:
        """The background as `jaxmech.patching.head_sets.HeadAblation` interventions for
        `jaxmech.models.bert.HookedEncoder.forward_one` (the definition)."""
        import jax.numpy as jnp

        from jaxmech.patching.head_sets import HeadAblation

        return [HeadAblation(site, jnp.asarray(m), jnp.asarray(v)) for site, (m, v) in self.values.items()]

    def fold(self, model):
        """A copy of ``model`` computing the model with `interventions` applied (see the module docstring).

        Raises:
            TypeError: If the model's blocks have no ``W_O``/``b_O`` to fold into.
        """
        import jax.numpy as jnp
        from flax import nnx

        new = nnx.clone(model)
        owner = getattr(new.blocks, "attn", new.blocks)
        if not (hasattr(owner, "W_O") and hasattr(owner, "b_O")):
            raise TypeError(f"{type(model).__name__}: no W_O/b_O in its blocks; background ablations cannot be "
                            "applied to this architecture")
        W_O = owner.W_O[...]  # [layer, head, d_head, d_model]
        b_O = owner.b_O[...]  # [layer, d_model]
        keep = jnp.ones(W_O.shape[:2], W_O.dtype)
        for site, (mask, value) in self.values.items():
            mask, value = jnp.asarray(mask, W_O.dtype), jnp.asarray(value, W_O.dtype)
            contribution = jnp.einsum("lhe,lhem->lhm", value, W_O) if site == "z" else value
            b_O = b_O + jnp.einsum("lh,lhm->lm", mask, contribution)
            keep = keep * (1 - mask)
        owner.W_O[...] = W_O * keep[:, :, None, None]
        owner.b_O[...] = b_O
        return new

    def describe(self) -> dict[str, Any]:
        """For results' metadata: the ablations, the means (per head, ``"LAYER.HEAD"``) and how they were
        computed."""
        out: dict[str, Any] = {
            "ablations": [{"heads": [f"{l}.{h}" for l, h in a.heads], "kind": a.kind, "site": a.site}
                          for a in self.ablations],
            "method": "folded into W_O/b_O (equal to the HeadAblation interventions)",
        }
        if any(a.kind == "mean" for a in self.ablations):
            out["mean_rule"] = ("mean over every real token (attention_mask == 1) of both inputs of every pair, "
                                "clean model (no background), pooled over positions")
            out["mean_tokens"] = int(self.n_tokens)
            out["means"] = {a.site: {f"{l}.{h}": self.values[a.site][1][l, h].tolist() for l, h in a.heads}
                            for a in self.ablations if a.kind == "mean"}
        return out


def dataset_means(model, pairs, sites: Sequence[str], *, pad_id: int = 0, batch_size: int = 32,
                  buckets: Sequence[int] | None = None, max_length: int | None = None
                  ) -> tuple[dict[str, np.ndarray], int]:
    """Per-head means of head sites over every real token of both inputs of every pair (see the module
    docstring).

    Args:
        model: The encoder (without the background).
        pairs: `jaxmech.data.records.AlignedPair` s as the model reads them.
        sites: Head sites, e.g. ``("z",)``.
        pad_id: Padding id.
        batch_size: Inputs per forward.
        buckets: Padded lengths (default: `jaxmech.patching.inputs.DEFAULT_BUCKETS`).
        max_length: Longest allowed length (default: the model's context).

    Returns:
        ``({site: [layer, head, d] float32 means}, number of tokens)``.

    Raises:
        ValueError: If there are no pairs.
    """
    import jax.numpy as jnp

    from jaxmech.hf.tokenizer import bucket_length
    from jaxmech.patching.caches import run_cached
    from jaxmech.patching.inputs import DEFAULT_BUCKETS

    if not pairs:
        raise ValueError("mean ablation needs pairs to average over; none given")
    max_length = max_length or model.cfg.n_ctx
    buckets = tuple(buckets or DEFAULT_BUCKETS)
    inputs = [(ids, tt) for p in pairs for ids, tt in ((p.baseline_ids, p.baseline_token_type_ids),
                                                       (p.perturbed_ids, p.perturbed_token_type_ids))]
    by_len: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(inputs):
        by_len.setdefault(bucket_length(len(ids), buckets, max_length), []).append(i)
    sums = {s: None for s in sites}
    n_tokens = 0
    for T, idx in sorted(by_len.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            ids = np.full((len(chunk), T), pad_id, np.int32)
            tt = np.zeros((len(chunk), T), np.int32)
            mask = np.zeros((len(chunk), T), np.int32)
            for r, i in enumerate(chunk):
                n = len(inputs[i][0])
                ids[r, :n], tt[r, :n], mask[r, :n] = inputs[i][0], inputs[i][1], 1
            _, cache = run_cached(model, jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask),
                                  capture=frozenset(sites))
            for s in sites:
                a = np.asarray(cache[s], np.float64)  # [batch, layer, pos, head, d]
                total = np.einsum("blphd,bp->lhd", a, mask.astype(np.float64))
                sums[s] = total if sums[s] is None else sums[s] + total
            n_tokens += int(mask.sum())
    return {s: (sums[s] / n_tokens).astype(np.float32) for s in sites}, n_tokens


def resolve_background(model, pairs, background, *, pad_id: int = 0, buckets: Sequence[int] | None = None,
                       max_length: int | None = None) -> ResolvedBackground | None:
    """Checks the ablations against the model and computes their values (means by a first pass over
    ``pairs``).

    Args:
        model: The encoder (without the background).
        pairs: The pairs of the run (for means).
        background: None, an `Ablation`, a sequence of them, or a `ResolvedBackground` (returned as is).
        pad_id: Padding id.
        buckets: Padded lengths of the mean pass.
        max_length: Longest allowed length.

    Returns:
        A `ResolvedBackground`, or None for no background.

    Raises:
        ValueError: For a head out of range or ablated twice; TypeError for an unsupported intervention.
    """
    if background is None or isinstance(background, ResolvedBackground):
        return background
    ablations = as_ablations(background)
    if not ablations:
        return None
    cfg = model.cfg
    for a in ablations:
        a.check(cfg.n_layers, cfg.n_heads)
    dims = {"z": cfg.d_head, "result": cfg.d_model}
    mean_sites = tuple(sorted({a.site for a in ablations if a.kind == "mean"}))
    means, n_tokens = (dataset_means(model, pairs, mean_sites, pad_id=pad_id, buckets=buckets,
                                     max_length=max_length) if mean_sites else ({}, 0))
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for a in ablations:
        mask, value = values.get(a.site, (np.zeros((cfg.n_layers, cfg.n_heads), np.float32),
                                          np.zeros((cfg.n_layers, cfg.n_heads, dims[a.site]), np.float32)))
        for layer, head in a.heads:
            mask[layer, head] = 1.0
            if a.kind == "mean":
                value[layer, head] = means[a.site][layer, head]
        values[a.site] = (mask, value)
    return ResolvedBackground(ablations, values, n_tokens)


def with_background(lm, pairs, background):
    """``(lm with its model folded, ResolvedBackground)``; ``(lm, None)`` when there is no background.

    ``lm`` is a `jaxmech.hf.loading.LoadedModel` (or anything with ``model`` and ``tokenizer``); it is not changed.
    """
    tok = lm.tokenizer
    resolved = resolve_background(lm.model, pairs, background, pad_id=getattr(tok, "pad_id", 0),
                                  buckets=getattr(tok, "buckets", None), max_length=getattr(tok, "max_length", None))
    if resolved is None:
        return lm, None
    folded = resolved.fold(lm.model)
    if dataclasses.is_dataclass(lm) and not isinstance(lm, type):
        return dataclasses.replace(lm, model=folded), resolved
    import copy

    new = copy.copy(lm)
    new.model = folded
    return new, resolved
