"""Activation, path and attribution patching as vmapped, jitted programs.

Find each concern by file name:

* `inputs`: aligned pairs read from files or text, padded to one length bucket (`PairBatch`).
* `families`: the one registry of families (sites, result axes, description, runner).
* `caches`: the baseline run with its restart cache, the perturbed run's sources (`prepare`).
* `engine`: restarted patched forwards that compute only what a single-site patch can change.
* `schedule`: work items, chunk sizes from free memory, the device mesh.
* `program`: the `Kernel` interface and the one compiled program (scan over layers and chunks, vmap over
  items).
* `activation`, `path`, `attribution`: exact activation patching, path patching (heads to score, heads to
  receiver heads, components to receiver heads), gradient estimates and their exact verification.
* `metrics`: raw, difference, normalized (with near-zero denominators flagged), rank change.
* `results`: `SweepResult` (one family, one batch) and `PatchingResult` (a run; save/load).
* `run`: `run_patching` and `patch`, what ``jaxmech patch`` does.

Interventions (`PatchSpec`, `AdditiveDelta`, `HeadReplacement`) live in `jaxmech.interventions`; the pair
type and alignment in `jaxmech.data.records` and `jaxmech.data.align`.
"""

from jaxmech.data.align import AlignmentError, align_texts_with_filler, align_with_filler
from jaxmech.data.records import AlignedPair
from jaxmech.interventions import AdditiveDelta, HeadReplacement, Intervention, PatchSpec, one_hot, spec_in_axes
from jaxmech.patching.activation import activation_patch
from jaxmech.patching.attribution import activation_gradients, attribution_patch, verify_top_k
from jaxmech.patching.caches import prepare
from jaxmech.patching.families import FAMILIES, PATH_FAMILIES, REGISTRY, Family, UnknownFamilyError, get_family
from jaxmech.patching.inputs import PairBatch, batch_pairs, read_pairs, reverse_batch
from jaxmech.patching.metrics import METRICS, MetricResult, apply_metric, normalized_effect, rank_change
from jaxmech.patching.path import parse_heads, path_components_to_heads, path_to_heads, path_to_score
from jaxmech.patching.results import PatchingResult, SweepResult
from jaxmech.patching.run import patch, run_patching
from jaxmech.patching.schedule import local_mesh

__all__ = [
    "FAMILIES",
    "METRICS",
    "PATH_FAMILIES",
    "REGISTRY",
    "AdditiveDelta",
    "AlignedPair",
    "AlignmentError",
    "Family",
    "HeadReplacement",
    "Intervention",
    "MetricResult",
    "PairBatch",
    "PatchSpec",
    "PatchingResult",
    "SweepResult",
    "UnknownFamilyError",
    "activation_gradients",
    "activation_patch",
    "align_texts_with_filler",
    "align_with_filler",
    "apply_metric",
    "attribution_patch",
    "batch_pairs",
    "get_family",
    "local_mesh",
    "normalized_effect",
    "one_hot",
    "parse_heads",
    "patch",
    "path_components_to_heads",
    "path_to_heads",
    "path_to_score",
    "prepare",
    "rank_change",
    "read_pairs",
    "reverse_batch",
    "run_patching",
    "spec_in_axes",
    "verify_top_k",
]
