"""Hugging Face interoperability: every checkpoint key map, ModernBERT's too (`jaxmech.hf.convert`), loading local
folders, hub ids and packaged models by their ``model_type`` (`jaxmech.hf.loading`) and the pair tokenizer
(`jaxmech.hf.tokenizer`)."""
