"""Hugging Face interoperability: checkpoint key maps (`jaxmech.hf.convert`), loading local folders, hub ids and
packaged models (`jaxmech.hf.loading`) and the pair tokenizer (`jaxmech.hf.tokenizer`)."""
