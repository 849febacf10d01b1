"""Analytic matmul FLOPs of the patching engine (``2 * m * n * k`` per product), per patched run.

Why analytic and not XLA's ``cost_analysis()``: XLA counts a while loop's body once, whatever its trip count
(a 10-step ``lax.scan`` of matmuls reports a tenth of its FLOPs; the sweep's programs are scans over layers,
chunks and, inside each restarted run, the remaining layers under a ``lax.cond``, whose cost XLA takes as the
larger branch), so its numbers for these programs are those of one iteration. The counts here follow what the
engine computes (`jaxmech.patching.engines.post_ln`): a restarted run from the patched layer, dirty rows only where one
row changed, the last block on the [CLS] row only. `benchmarks/bench_patching.py` reports them beside its
timings and the sweep (`jaxmech.sweeps.roofline`) per patched run.
"""

from __future__ import annotations

import numpy as np

from jaxmech.config import EncoderConfig


def layer_flops(c: EncoderConfig, rows: int, key_rows: int, qkv_rows: int) -> float:
    """One block: q/k/v projections for ``qkv_rows`` rows (keys/values of every key row), attention and
    everything after it for ``rows`` query rows."""
    d, f = c.d_model, c.d_mlp
    return 2 * 3 * qkv_rows * d * d + 2 * 2 * rows * key_rows * d + 2 * rows * d * d + 2 * 2 * rows * d * f


def full_forward_flops(c: EncoderConfig, n: int) -> float:
    """A whole forward of ``n`` tokens (and the score head)."""
    return c.n_layers * layer_flops(c, n, n, n) + 2 * c.d_model * c.d_model


def cls_last_flops(c: EncoderConfig, n: int, dirty: bool) -> float:
    """The CLS-only last block; k/v for every row unless only one row changed (dirty)."""
    d, f = c.d_model, c.d_mlp
    kv = 2 * 2 * (1 if dirty else n) * d * d
    return kv + 2 * 2 * d * d + 2 * 2 * n * d + 2 * 2 * d * f


def engine_flops(c: EncoderConfig, n: int, layer: int, kind: str) -> float:
    """FLOPs of jaxmech's restarted run for one site at ``layer``.

    ``kind``: ``"row"`` (row-local site at one position: the patched block on one row, then dirty rows),
    ``"dirty"`` (resid_pre at one position), ``"global"`` (k/v/all-position sites: the patched block's
    attention and MLP on all rows from cached q/k/v), ``"frozen"`` (path patching to the score).
    """
    L, d, f = c.n_layers, c.d_model, c.d_mlp
    one_row = 2 * 2 * n * d + 2 * d * d + 2 * 2 * d * f
    dirty = layer_flops(c, n, n, 1)
    total = 0.0
    if kind == "frozen":
        return one_row + (L - 1 - layer) * (2 * 2 * d * f) + 2 * d * d
    if kind == "row":
        total += one_row
        start, first_dirty = layer + 1, True
    elif kind == "dirty":
        start, first_dirty = layer, True
    else:
        total += layer_flops(c, n, n, 0)
        start, first_dirty = layer + 1, False
    for j in range(start, L):
        is_first = j == start and first_dirty
        if j == L - 1:
            total += cls_last_flops(c, n, is_first)
        else:
            total += dirty if is_first else layer_flops(c, n, n, n)
    return total + 2 * d * d


def path_to_heads_flops(c: EncoderConfig, n: int, layer: int, receiver_layer: int) -> float:
    """Stage 1 (frozen attention, every row, up to the receiver layer, then the receivers' projection) and
    stage 2 (a full run from the receiver layer)."""
    d, f = c.d_model, c.d_mlp
    if layer >= receiver_layer:
        return 0.0
    stage1 = layer_flops(c, n, n, 0) + (receiver_layer - layer - 1) * 2 * 2 * n * d * f + 2 * n * d * d
    return stage1 + (c.n_layers - receiver_layer) * layer_flops(c, n, n, n) + 2 * d * d


FAMILY_KIND = {
    "block_every": ("dirty", "row", "row"),
    "head_all_pos_v": ("global",),
    "head_all_pos_z": ("global",),
    "head_by_pos_z": ("row",),
    "head_by_pos_pattern": ("row",),
    "path_to_score": ("frozen",),
}


def family_flops(c: EncoderConfig, n: int, family: str, result: np.ndarray) -> float:
    """Total engine FLOPs over the sites that were evaluated (finite entries of ``result``)."""
    kinds = FAMILY_KIND[family]
    arr = result if len(kinds) > 1 else result[None]
    total = 0.0
    for comp, kind in enumerate(kinds):
        for layer in range(c.n_layers):
            # layer axis: first axis after the component axis for every family here
            count = np.isfinite(arr[comp, layer]).sum()
            total += count * engine_flops(c, n, layer, kind)
    return total
