"""Training cross-encoders with optax: fine-tuning, distillation, embedding-only tuning, checkpoints, export.

* `config`: the TOML training config (`load_config`, `TrainConfig`).
* `data`: candidate sets from files or the shared corpus, query splits, tokenised pair tables, the
  deterministic group sampler.
* `losses`: pointwise (MSE, BCE, sigmoid-MSE), pairwise (RankNet, margin) and MarginMSE losses.
* `teachers`: cross-encoder, bi-encoder-similarity and BM25 teachers.
* `inference`: batched, jitted scoring and embedding.
* `idf_init`: the paper's IDF-aligned U0 initialisation (notes §9 F.2, sign convention of §6).
* `evaluate`: nDCG@k, MRR@k and correlations on held-out queries.
* `trainer`: the `Trainer` (jitted step, trainable subsets, orbax checkpoints, HF export).
* `run`: a config run end to end (`train_from_config`, `evaluate_from_config`): what ``jaxmech train CONFIG``
  and ``jaxmech train eval CONFIG`` (`jaxmech.cli.train`) do.
"""


from jaxmech.lazy import lazy_exports

# Loaded on first use, so that reading a config (and `jaxmech train --help`) does not import JAX.
__all__, __getattr__, __dir__ = lazy_exports("jaxmech.train", {
    "jaxmech.train.config": ("ConfigError", "TrainConfig", "load_config"),
    "jaxmech.train.run": ("evaluate_from_config", "train_from_config"),
    "jaxmech.train.trainer": ("Checkpoints", "ResumeError", "Trainer", "TrainResult"),
}, globals())
