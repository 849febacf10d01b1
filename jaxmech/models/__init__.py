"""The encoders in Flax: the abstract `jaxmech.models.base.Encoder` (what every model offers, including the key of
the restart engine that patches it), BERT-family post-LN blocks (`jaxmech.models.bert`) and ModernBERT's pre-LN
blocks (`jaxmech.models.modernbert`). Models import nothing from `jaxmech.hf` or `jaxmech.patching`."""
