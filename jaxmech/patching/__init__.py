"""Activation, path and attribution patching as vmapped, jitted programs.

* `spec`: patch specs as data (`PatchSpec`, `AdditiveDelta`), the masked blend applied inside the forward.
* `pairs`: aligned (baseline, perturbed) inputs: filler alignment, position maps, bucketed batches.
* `engine`: restarted patched forwards that compute only what a single-site patch can change.
* `families`: the activation-patching families and their TransformerLens-shaped results.
* `sweep`: exact sweeps over layers, heads, positions and pairs (chunked, sharded, compiled once).
* `path`: path patching (heads to score, heads to receiver heads, components to receiver heads).
* `attribution`: gradient estimates of every site's effect, and exact verification of the top sites.
* `metrics`: raw, difference, normalized (with near-zero denominators flagged), rank change.
"""

from jaxmech.patching.attribution import activation_gradients, attribution_patch, verify_top_k
from jaxmech.patching.families import FAMILIES, PATH_FAMILIES, Family, UnknownFamilyError, get_family
from jaxmech.patching.metrics import METRICS, MetricResult, apply_metric, normalized_effect, rank_change
from jaxmech.patching.pairs import AlignmentError, Pair, PairBatch, align_with_filler, batch_pairs
from jaxmech.patching.path import parse_heads, path_components_to_heads, path_to_heads, path_to_score
from jaxmech.patching.spec import AdditiveDelta, PatchSpec, one_hot, spec_in_axes
from jaxmech.patching.sweep import SweepResult, activation_patch, local_mesh, prepare, reverse_batch

__all__ = [
    "FAMILIES",
    "METRICS",
    "PATH_FAMILIES",
    "AdditiveDelta",
    "AlignmentError",
    "Family",
    "MetricResult",
    "Pair",
    "PairBatch",
    "PatchSpec",
    "SweepResult",
    "UnknownFamilyError",
    "activation_gradients",
    "activation_patch",
    "align_with_filler",
    "apply_metric",
    "attribution_patch",
    "batch_pairs",
    "get_family",
    "local_mesh",
    "normalized_effect",
    "one_hot",
    "parse_heads",
    "path_components_to_heads",
    "path_to_heads",
    "path_to_score",
    "prepare",
    "rank_change",
    "reverse_batch",
    "spec_in_axes",
    "verify_top_k",
]
