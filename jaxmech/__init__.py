"""jaxmech: batched, jitted activation, path and attribution patching for BERT-family cross-encoders.

The public API is re-exported here, loaded on first use (so ``jaxmech --help`` and light submodules do not
import JAX); see the README for the architecture.
"""

from __future__ import annotations

from jaxmech import runtime as _runtime  # light: imports neither JAX nor transformers
from jaxmech.lazy import lazy_exports

# Only a logging filter on transformers' messages that do not apply to jaxmech (before anything imports
# transformers). Importing jaxmech sets no environment variable and creates no folder: the persistent
# compilation cache is turned on by the entry points (`jaxmech.cli.main`, `run_sweep`) through
# `jaxmech.runtime.enable_default_compilation_cache`.
_runtime.quiet_transformers()

__version__ = "0.1.0"

_EXPORTS = {
    "jaxmech.config": ("MINILM_L6_H384", "MINILM_L12_H384", "EncoderConfig", "UnsupportedConfigError"),
    "jaxmech.hf.convert": ("ConversionError", "build_model", "from_hf_state_dict", "to_hf_state_dict"),
    "jaxmech.hf.loading": ("LoadedModel", "ModelNotFoundError", "WeightsError", "load_model", "save_pretrained"),
    "jaxmech.models.bert": ("BiEncoder", "CrossEncoder", "HookedEncoder", "HookPoints", "Output", "PoolingConfig"),
    "jaxmech.interventions": ("PatchSpec",),
    "jaxmech.data.align": ("align_with_filler",),
    "jaxmech.patching": ("PatchingResult", "activation_patch", "attribution_patch", "batch_pairs",
                         "path_components_to_heads", "path_to_heads", "path_to_score", "run_patching"),
    "jaxmech.sites": ("SITES", "Site", "UnknownSiteError", "get_site", "parse_tl_name"),
    "jaxmech.hf.tokenizer": ("EncodedBatch", "PairTokenizer", "Truncation", "TruncationError"),
}
__all__, __getattr__, __dir__ = lazy_exports("jaxmech", _EXPORTS, globals())
