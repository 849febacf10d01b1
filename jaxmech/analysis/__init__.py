"""Analyses that consume patching results and activations.

* `aggregate`: averaging position-resolved results by the paper's token types; ranking heads.
"""

from jaxmech.analysis.aggregate import TOKEN_TYPE_ORDER, mean_by_token_type, top_heads

__all__ = ["TOKEN_TYPE_ORDER", "mean_by_token_type", "top_heads"]
