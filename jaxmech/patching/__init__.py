"""Activation, path and attribution patching as vmapped, jitted programs.

Find each concern by file name:

* `inputs`: aligned pairs read from files or text, padded to one length bucket (`PairBatch`).
* `families`: the one registry of families (sites, result axes, kind, description, methods; JAX-free);
  `runners`: the function that runs each family; `receivers`: receiver heads and head groups, parsed once.
* `caches`: the baseline run with its restart cache, the perturbed run's sources (`prepare`).
* `engines`: the registry from a model's engine key to its engine (`engine_of`); `engines.post_ln`: restarted
  patched forwards that compute only what a single-site patch can change; `engines.pre_ln`: ModernBERT's;
  `engines.full_forward`: full forwards, for backgrounds of general interventions.
* `schedule`: work items, chunk sizes from free memory, the device mesh.
* `program`: the `Kernel` interface and the one compiled program (scan over layers and chunks, vmap over
  items).
* `activation`, `path`, `attribution`: exact activation patching, path patching (heads to score, heads to
  receiver heads, components to receiver heads), gradient estimates and their exact verification.
* `metrics`: raw, difference, normalized (with near-zero denominators flagged), rank change.
* `readouts`: what a patched run measures: the score (default), an attention weight, a logit margin, a
  projection of a hidden state (declared as data, ``--readout SPEC``; JAX-free); `reading`: how kernels
  compute them.
* `results`: `SweepResult` (one family, one batch) and `PatchingResult` (a run; save/load).
* `run`: `run_patching` (one request runs all families of each chunk) and `patch`, what ``jaxmech patch`` does.

Interventions (`PatchSpec`, `AdditiveDelta`, `HeadReplacement`) live in `jaxmech.interventions`; the pair
type and alignment in `jaxmech.data.records` and `jaxmech.data.align`.
"""

from __future__ import annotations

from jaxmech.lazy import lazy_exports

_EXPORTS = {
    "jaxmech.data.align": ("AlignmentError", "align_texts_with_filler", "align_with_filler"),
    "jaxmech.data.records": ("AlignedPair",),
    "jaxmech.interventions": ("AdditiveDelta", "HeadReplacement", "Intervention", "PatchSpec", "one_hot",
                              "spec_in_axes"),
    "jaxmech.patching.activation": ("activation_patch",),
    "jaxmech.patching.attribution": ("activation_gradients", "attribution_patch", "verify_top_k"),
    "jaxmech.patching.engines": ("ENGINES", "Engine", "engine_of", "prepare"),
    "jaxmech.patching.families": ("FAMILIES", "PATH_FAMILIES", "REGISTRY", "Family", "UnknownFamilyError",
                                  "get_family"),
    "jaxmech.patching.inputs": ("PairBatch", "batch_pairs", "read_pairs", "reverse_batch"),
    "jaxmech.patching.metrics": ("METRICS", "MetricResult", "apply_metric", "normalized_effect", "rank_change"),
    "jaxmech.patching.path": ("path_components_to_heads", "path_to_heads", "path_to_score"),
    "jaxmech.patching.receivers": ("parse_heads",),
    "jaxmech.patching.readouts": ("AttentionWeight", "LogitMargin", "Projection", "ReadoutError", "Score",
                                  "parse_readout"),
    "jaxmech.patching.results": ("PatchingResult", "SweepResult"),
    "jaxmech.patching.run": ("patch", "run_patching"),
    "jaxmech.patching.schedule": ("local_mesh",),
}
__all__, __getattr__, __dir__ = lazy_exports("jaxmech.patching", _EXPORTS, globals())
