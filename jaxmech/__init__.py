"""jaxmech: batched, jitted activation, path and attribution patching for BERT-family cross-encoders.

The public API is re-exported here; see the README for the architecture.
"""

from jaxmech.config import MINILM_L6_H384, MINILM_L12_H384, EncoderConfig, UnsupportedConfigError
from jaxmech.convert import ConversionError, build_model, from_hf_state_dict, to_hf_state_dict
from jaxmech.loading import LoadedModel, ModelNotFoundError, WeightsError, load_model, save_pretrained
from jaxmech.model import BiEncoder, CrossEncoder, HookedEncoder, HookPoints, Output, PoolingConfig
from jaxmech.patching import (
    PatchSpec,
    activation_patch,
    align_with_filler,
    attribution_patch,
    batch_pairs,
    path_components_to_heads,
    path_to_heads,
    path_to_score,
)
from jaxmech.sites import SITES, Site, UnknownSiteError, get_site, parse_tl_name
from jaxmech.tokenizer import EncodedBatch, PairTokenizer, Truncation, TruncationError

__version__ = "0.1.0"

__all__ = [
    "MINILM_L12_H384",
    "MINILM_L6_H384",
    "SITES",
    "BiEncoder",
    "ConversionError",
    "CrossEncoder",
    "EncodedBatch",
    "EncoderConfig",
    "HookPoints",
    "HookedEncoder",
    "LoadedModel",
    "ModelNotFoundError",
    "Output",
    "PairTokenizer",
    "PatchSpec",
    "PoolingConfig",
    "Site",
    "Truncation",
    "TruncationError",
    "UnknownSiteError",
    "UnsupportedConfigError",
    "WeightsError",
    "activation_patch",
    "align_with_filler",
    "attribution_patch",
    "batch_pairs",
    "build_model",
    "from_hf_state_dict",
    "get_site",
    "load_model",
    "parse_tl_name",
    "path_components_to_heads",
    "path_to_heads",
    "path_to_score",
    "save_pretrained",
    "to_hf_state_dict",
]
