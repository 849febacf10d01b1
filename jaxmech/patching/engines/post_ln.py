"""Restarted patched forwards: compute only what a single-site patch can change.

A patch at one site of block ``l`` leaves everything before it unchanged, so a patched run can restart from the
baseline's cached activations instead of re-running the prefix. This module evaluates exactly the same
function as the full forward with a `PatchSpec` (`jaxmech.models.bert.HookedEncoder.forward_one` with
``interventions=[spec]``; the tests check the two agree), doing less arithmetic:

1. **Restart at the patched layer.** Queries, keys and values of block ``l`` come from the cache.
2. **Recompute only the patched rows.** Every site after the attention pattern is position-wise, and a
   patched query row, score row, pattern row or ``z`` row changes only its own position. Block ``l`` then runs
   on those rows alone (``rows``), and block ``l + 1`` sees an input that differs from the baseline only there:
   it projects queries, keys and values for those rows only and splices them into the cached ones ("dirty
   rows").
3. **Score only [CLS] in the last block** when the readout reads [CLS] alone (cross-encoders): the last block
   computes keys and values for every position but queries, attention, MLP and LayerNorms for row 0 only.
4. **Frozen attention** (path patching to the score): with every head's ``z`` frozen to the baseline, nothing
   mixes positions after the sender, so only the rows the readout reads are propagated, through the MLPs.

Patches at ``resid_pre``, ``k`` or ``v`` change every row of their block (every query attends to the patched
key); they restart at ``l`` but run the block on all rows (``resid_pre`` at one position uses dirty rows).

The layer index ``l`` may be traced but must not be batched (``vmap`` over sites of the same layer), so that
the ``lax.switch`` choosing each block's work stays a real branch instead of computing every branch.
"""

from __future__ import annotations

import dataclasses
from typing import final

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxmech.interventions import PatchSpec
from jaxmech.models.base import NO_HOOKS, Hooks
from jaxmech.models.bert import Block, HookedEncoder, layer_slice
from jaxmech.patching.caches import RestartCache
from jaxmech.sites import BLOCK_ORDER, get_site

# Sites whose patch at some positions changes every row of the block (every query reads every key).
GLOBAL_SITES = frozenset({"resid_pre", "k", "v"})


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerView:
    """Baseline activations of one example at one layer, for restarting there.

    Attributes:
        resid_pre: ``[pos, d_model]`` block input (at ``layer == n_layers``: the final hidden state).
        q, k, v: ``[pos, head_index, d_head]``.
        extras: Other cached sites of this layer (e.g. ``z``, ``attn_out``), full rows; used at the entry
            block so that work upstream of the patched site is not redone.
    """

    resid_pre: Float[Array, "pos d_model"]
    q: Float[Array, "pos head_index d_head"]
    k: Float[Array, "pos head_index d_head"]
    v: Float[Array, "pos head_index d_head"]
    extras: dict[str, Array]


@final
class EntryHooks(Hooks):
    """Hook points of the patched block: cached values upstream of the site, the blend at the site.

    Args:
        view: The baseline at this layer.
        spec: The layer-local patch.
        rows: The rows the block runs on (None: every row).
    """

    def __init__(self, view: LayerView, spec: PatchSpec, rows):
        self.view, self.spec, self.rows = view, spec, rows
        self.row_spec = spec if rows is None else spec.at_rows(rows)
        self.order = BLOCK_ORDER.index(spec.site)

    def wants(self, name: str) -> bool:
        """Only the patched site is read or written."""
        return name == self.spec.site

    def _cached(self, name: str):
        x = self.view.extras.get(name)
        if x is not None and self.rows is not None:
            x = jnp.take(x, self.rows, axis=get_site(name).pos_axis)
        return x

    def __call__(self, name: str, x: Array) -> Array:
        """Cached upstream values, the blend at the site, ``x`` elsewhere."""
        cached = self._cached(name)
        if BLOCK_ORDER.index(name) < self.order and cached is not None:
            return cached  # the recomputation of x is dead code and is removed under jit
        if name == self.spec.site:
            base = cached if cached is not None else x
            return self.row_spec.apply(base, 0)
        return x


def _take_rows(x, rows):
    return x if rows is None else jnp.take(x, rows, axis=0)


def entry_block(
    block: Block, view: LayerView, spec: PatchSpec, key_mask: Bool[Array, " pos"], rows: Int[Array, " r"] | None
) -> Float[Array, "r d_model"]:
    """Runs the patched block from its cached q/k/v, on ``rows`` (or all rows), blending at ``spec.site``.

    ``spec`` is layer-local: its source has a length-1 layer axis (``source[0]`` is this layer's).

    Returns:
        ``normalized_resid_post`` of this block at ``rows`` (all rows if None).
    """
    if spec.site == "resid_pre":
        raise ValueError("resid_pre patches restart through dirty rows, not entry_block")
    hooks = EntryHooks(view, spec, rows)
    q = _take_rows(view.q, rows)
    if spec.site == "q":
        q = hooks.row_spec.apply(q, 0)
    k = spec.apply(view.k, 0) if spec.site == "k" else view.k
    v = spec.apply(view.v, 0) if spec.site == "v" else view.v
    attn_out = block.attend(q, k, v, key_mask, hooks)
    return block.after_attention(_take_rows(view.resid_pre, rows), attn_out, hooks)


def _splice(cached, rows, new):
    return cached.at[rows].set(new)


def dirty_block(
    block: Block, x: Float[Array, "pos d_model"], view: LayerView, key_mask, rows, *, cls_only: bool
) -> Float[Array, "pos d_model"]:
    """A block whose input differs from the cached baseline input only at ``rows``.

    Projects queries, keys and values for ``rows`` only and splices them into the cached ones. With
    ``cls_only`` it computes the output of row 0 alone (other rows of the result are stale).
    """
    xr = x[rows]
    k = _splice(view.k, rows, block.attn.project(xr, "k"))
    v = _splice(view.v, rows, block.attn.project(xr, "v"))
    if cls_only:
        q0 = block.attn.project(x[:1], "q")
        out0 = block.after_attention(x[:1], block.attend(q0, k, v, key_mask, NO_HOOKS), NO_HOOKS)
        return x.at[:1].set(out0)
    q = _splice(view.q, rows, block.attn.project(xr, "q"))
    return block.after_attention(x, block.attend(q, k, v, key_mask, NO_HOOKS), NO_HOOKS)


def full_block(block: Block, x, key_mask, *, cls_only: bool):
    """An unpatched block on new inputs; with ``cls_only``, only row 0 of the output is computed."""
    if not cls_only:
        return block(x, key_mask, NO_HOOKS)
    k, v = block.attn.project(x, "k"), block.attn.project(x, "v")
    q0 = block.attn.project(x[:1], "q")
    out0 = block.after_attention(x[:1], block.attend(q0, k, v, key_mask, NO_HOOKS), NO_HOOKS)
    return x.at[:1].set(out0)


def finish(
    model: HookedEncoder,
    x: Float[Array, "pos d_model"],
    start,
    view: LayerView,
    key_mask,
    dirty_rows: Int[Array, " r"] | None,
    *,
    stop_layer: int | None = None,
) -> Float[Array, "pos d_model"]:
    """Runs blocks ``start <= j < stop_layer`` on ``x = resid_pre[start]`` (``start`` traced, unbatched).

    Block ``start`` uses dirty rows if ``dirty_rows`` is given (``view`` holds its cached q/k/v). The last
    block computes only [CLS] when the model's readout reads [CLS] alone and ``stop_layer`` is the end.

    Returns:
        ``resid_pre[stop_layer]`` (the final hidden state by default; only row 0 valid in CLS-only mode).
    """
    L = model.cfg.n_layers
    stop = L if stop_layer is None else stop_layer
    cls_last = model.readout_uses_cls_only and stop == L
    dirty = dirty_rows is not None

    def body(x, xs):
        block, j = xs
        # Only the variants this call can select are traced: each is a whole block in the compiled program
        # (and, on GPUs, matmuls to autotune), so unused ones cost compile time. Index 0 skips the block.
        variants = [lambda x: x, lambda x: full_block(block, x, key_mask, cls_only=False)]
        if dirty:
            variants.append(lambda x: dirty_block(block, x, view, key_mask, dirty_rows, cls_only=False))
        if cls_last:
            variants.append(lambda x: full_block(block, x, key_mask, cls_only=True))
            if dirty:
                variants.append(lambda x: dirty_block(block, x, view, key_mask, dirty_rows, cls_only=True))
        is_dirty = (j == start) if dirty else False
        branch = jnp.where(is_dirty, 2, 1) if dirty else 1
        if cls_last:
            cls_branch = jnp.where(is_dirty, 4, 3) if dirty else 2
            branch = jnp.where(j == L - 1, cls_branch, branch)
        branch = jnp.where((j < start) | (j >= stop), 0, branch)
        return jax.lax.switch(branch, variants, x), None

    x, _ = jax.lax.scan(body, x, (model.blocks, jnp.arange(L)))
    return x


def patched_hidden(
    model: HookedEncoder,
    key_mask: Bool[Array, " pos"],
    layer,
    here: LayerView,
    after: LayerView,
    spec: PatchSpec,
    rows: Int[Array, " r"] | None,
    *,
    stop_layer: int | None = None,
) -> Float[Array, "pos d_model"]:
    """The patched run's hidden state, restarted at ``layer``.

    Args:
        model: The encoder.
        key_mask: ``[pos]`` real-token mask.
        layer: Layer of the patch (traced scalar, not batched under vmap).
        here: Baseline `LayerView` at ``layer``.
        after: Baseline `LayerView` at ``layer + 1`` (``resid_pre`` = final hidden state when ``layer`` is
            the last; q/k/v then unused).
        spec: Layer-local patch: ``source`` has a leading axis of length 1, masks select heads/positions.
        rows: The positions the patch touches, if it touches only some and its site is row-local; None to
            run the patched block on every row.
        stop_layer: Stop before this block and return its input (for path patching to receivers).

    Returns:
        ``resid_pre[stop_layer]`` of the patched run (final hidden state by default).
    """
    if spec.site in GLOBAL_SITES:
        x = here.resid_pre
        if spec.site == "resid_pre":
            x = spec.apply(x, 0) if rows is None else x.at[rows].set(spec.at_rows(rows).apply(x[rows], 0))
            return finish(model, x, layer, here, key_mask, rows, stop_layer=stop_layer)
        out = entry_block(layer_slice(model.blocks, layer), here, spec, key_mask, None)
        return finish(model, out, layer + 1, after, key_mask, None, stop_layer=stop_layer)
    out = entry_block(layer_slice(model.blocks, layer), here, spec, key_mask, rows)
    if rows is None:
        return finish(model, out, layer + 1, after, key_mask, None, stop_layer=stop_layer)
    x = after.resid_pre.at[rows].set(out)
    return finish(model, x, layer + 1, after, key_mask, rows, stop_layer=stop_layer)


def frozen_attention_hidden(
    model: HookedEncoder,
    key_mask: Bool[Array, " pos"],
    layer,
    here: LayerView,
    attn_out_all: Float[Array, "layer r d_model"],
    spec: PatchSpec,
    rows: Int[Array, " r"] | None,
    *,
    stop_layer: int | None = None,
) -> Float[Array, "r d_model"]:
    """Hidden rows after a patch at ``layer`` when every head's ``z`` is frozen to the baseline.

    With attention frozen, block ``j > layer`` adds its baseline ``attn_out`` and recomputes only its
    LayerNorms and MLP, row by row, so only ``rows`` (the rows the readout needs) are propagated.

    Args:
        attn_out_all: Baseline ``attn_out`` of every layer at ``rows``.
        stop_layer: Return ``resid_pre[stop_layer]`` rows instead of the final hidden rows.

    Returns:
        ``resid_pre[stop_layer]`` (final hidden state by default) at ``rows``.
    """
    L = model.cfg.n_layers
    stop = L if stop_layer is None else stop_layer
    x = entry_block(layer_slice(model.blocks, layer), here, spec, key_mask, rows)

    def body(x, xs):
        block, j, attn_out = xs
        run = lambda x: block.after_attention(x, attn_out, NO_HOOKS)
        return jax.lax.cond((j > layer) & (j < stop), run, lambda x: x, x), None

    x, _ = jax.lax.scan(body, x, (model.blocks, jnp.arange(L), attn_out_all))
    return x


def layer_view(cache: RestartCache, layer, extras: tuple[str, ...] = ()) -> LayerView:
    """The `LayerView` at ``layer`` of one example's `RestartCache` (``resid_pre`` of length ``n_layers + 1``,
    index ``n_layers`` = final hidden state; per-layer ``q``, ``k``, ``v``, whose indices clamp at the last
    layer)."""
    n_layers = cache.q.shape[0]
    j = jnp.minimum(layer, n_layers - 1)
    return LayerView(
        resid_pre=cache.resid_pre[layer],
        q=cache.q[j], k=cache.k[j], v=cache.v[j],
        extras={name: cache.site(name)[j] for name in extras},
    )
