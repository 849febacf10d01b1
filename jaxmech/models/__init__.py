"""The encoders in Flax: BERT-family post-LN blocks (`jaxmech.models.bert`) and ModernBERT's pre-LN blocks
(`jaxmech.models.modernbert`)."""
