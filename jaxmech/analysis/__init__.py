"""Analyses that consume patching results and activations (paper-notes §4-§9).

* `TOKEN_TYPE_ORDER`, `mean_by_token_type`, `top_heads`: from `jaxmech.patching.summaries`.
* `common`: batched attention readouts, scores, confidence intervals, the JSON writer.
* `circuit`: circuit roles from E4/E5 arrays, `discover_circuit`, the exact-match head detector.
* `soft_tf`: matching heads' attention to term matches (TFC2 saturation, LNC1 length, STMC1 synonyms).
* `idf_svd`: the IDF direction of the embedding matrix (raw and centred), IDF streamed from a collection.
* `editing`: U_0 edits and the whole-row control; nDCG_f ranked by score.
* `linear_bm25`: the linear semantic-BM25 fit against tuned BM25 and random features.
* `edges`: edge-level circuits (exact edge patching, EAP, EAP-IG) and their faithfulness.
* `registry`: `ANALYSES`, name -> (Options class, step, description), for sweeps and ``jaxmech analyze``;
  `options` holds each analysis' typed, frozen Options, `steps` the steps, `inputs` where inputs come from.
"""


from jaxmech.lazy import lazy_exports

# Loaded on first use, so that `jaxmech analyze --help` and config checks do not import JAX.
__all__, __getattr__, __dir__ = lazy_exports("jaxmech.analysis", {
    "jaxmech.patching.summaries": ("TOKEN_TYPE_ORDER", "mean_by_token_type", "top_heads"),
    "jaxmech.analysis.registry": ("ANALYSES", "analyze", "analyze_run", "get_analysis"),
}, globals())
