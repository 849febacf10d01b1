"""Locally built ELECTRA / RoBERTa / XLM-RoBERTa checkpoints and tokenizers for the architecture tests (nothing is
downloaded): random ``transformers`` models with a fixed seed, the real rerankers' exact shapes as config
dicts, small byte-level BPE and SentencePiece tokenizers trained on a few sentences, and HF reference
activations for every site that can be hooked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import TINY_ODD

# Odd tiny shapes per architecture (ELECTRA twice: embedding_size = hidden_size, and a projected 14).
_ROBERTA_TINY = dict(TINY_ODD, max_position_embeddings=TINY_ODD["max_position_embeddings"] + 2, type_vocab_size=1,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
TINY_ARCHS: dict[str, tuple[str, dict]] = {
    "electra": ("electra", dict(TINY_ODD, embedding_size=TINY_ODD["hidden_size"])),
    "electra-proj": ("electra", dict(TINY_ODD, embedding_size=14)),
    "roberta": ("roberta", _ROBERTA_TINY),
    "xlm-roberta": ("xlm-roberta", _ROBERTA_TINY),
}

# The exact shapes of public rerankers (values of their config.json; the weights here are random).
_XLMR = dict(vocab_size=250002, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
             layer_norm_eps=1e-5, hidden_act="gelu")
REAL_SHAPES: dict[str, tuple[str, dict]] = {
    "cross-encoder/ms-marco-electra-base": ("electra", dict(
        vocab_size=30522, embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12)),
    "cross-encoder/stsb-roberta-base": ("roberta", dict(
        _XLMR, vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514)),
    "BAAI/bge-reranker-base": ("xlm-roberta", dict(
        _XLMR, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=514)),
    "BAAI/bge-reranker-v2-m3": ("xlm-roberta", dict(
        _XLMR, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=8194)),
}


def hf_config(model_type: str, sizes: dict, *, num_labels: int = 1, init: float = 0.02):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **sizes, num_labels=num_labels, initializer_range=init)


def build_hf_model(model_type: str, sizes: dict, *, seed: int = 0, num_labels: int = 1, init: float = 0.02,
                   bare: bool = False, perturb: bool = True):
    """A random ``transformers`` model (``*ForSequenceClassification``, or the bare trunk with ``bare``).

    With ``perturb``, every bias and LayerNorm parameter and the padding rows of the embeddings (which HF
    initialises to 0 / 1) get noise, so that their conversion and use are tested too.
    """
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    cfg = hf_config(model_type, sizes, num_labels=num_labels, init=init)
    torch.manual_seed(seed)
    model = (AutoModel if bare else AutoModelForSequenceClassification).from_config(cfg, attn_implementation="eager")
    model.eval()
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 1 or "embeddings" in name:
                    p.add_(0.1 * torch.randn_like(p))
    return model


def arch_checkpoint(tmp_dir: Path, model_type: str, sizes: dict, **kw) -> Path:
    """`build_hf_model` saved as a Hugging Face folder (safetensors)."""
    build_hf_model(model_type, sizes, **kw).save_pretrained(tmp_dir)
    return tmp_dir


def padded_batch(vocab: int, lengths, T: int, *, pad_id: int, two_types: bool, seed: int = 0):
    """Random ids (never the pad id) right-padded with ``pad_id``; token type 1 on the second half when the
    model has two types."""
    rng = np.random.RandomState(seed)
    ids = np.full((len(lengths), T), pad_id, np.int64)
    tt = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.choice([t for t in range(3, vocab) if t != pad_id], n)
        mask[i, :n] = 1
        if two_types:
            tt[i, n // 2: n] = 1
    return ids, tt, mask


# --------------------------------------------------------------------------------------------------------------
# Reference activations
# --------------------------------------------------------------------------------------------------------------

EXTRA_SITES = ("embed", "pos_embed", "token_type_embed", "embed_ln_scale", "ln1_scale", "ln2_scale", "pooler_out")


def hf_all_activations(hf_model, ids, tt, mask, eps: float) -> dict[str, np.ndarray]:
    """`test_parity.hf_activations` plus the embedding components (hooked on the embedding tables), the
    head's dense output (the input of the last linear layer) and the LayerNorm scales (from the hooked
    pre-LN sums)."""
    from test_parity import hf_activations

    trunk = hf_model.base_model
    emb = trunk.embeddings
    rec: dict[str, np.ndarray] = {}

    def keep(name):
        return lambda m, a, o: rec.__setitem__(name, o.detach().numpy())

    handles = [emb.word_embeddings.register_forward_hook(keep("embed")),
               emb.position_embeddings.register_forward_hook(keep("pos_embed")),
               emb.token_type_embeddings.register_forward_hook(keep("token_type_embed"))]
    head = getattr(hf_model, "classifier", None)
    if head is not None:
        last = getattr(head, "out_proj", head)  # ELECTRA / RoBERTa heads: dense, act, out_proj; BERT: classifier
        handles.append(last.register_forward_pre_hook(
            lambda m, a: rec.__setitem__("pooler_out", a[0].detach().numpy())))
    try:
        acts = hf_activations(hf_model, ids, tt, mask)
    finally:
        for h in handles:
            h.remove()
    acts.update(rec)

    def scale(x):
        x = x.astype(np.float64)
        return np.sqrt(((x - x.mean(-1, keepdims=True)) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32)

    acts["embed_ln_scale"] = scale(acts["embed_sum"])
    acts["ln1_scale"] = scale(acts["resid_mid"])
    acts["ln2_scale"] = scale(acts["resid_post"])
    return acts


# --------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------

CORPUS = [
    "what is the capital of france", "paris is the capital and largest city of france",
    "a cat sat on a mat", "the quick brown fox jumps over a lazy dog", "how many people live in paris",
    "a river runs through a city", "what is a good dog food", "dogs and cats are a common pet",
    "the population of france is about sixty eight million", "a lazy afternoon in a park",
] * 4
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as RoBERTa / XLM-R


def roberta_tokenizer(folder: Path):
    """A byte-level BPE tokenizer with RoBERTa's post-processor (``<s> A </s></s> B </s>``), saved and loaded
    as ``transformers`` does for real RoBERTa folders."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import AutoTokenizer, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=SPECIALS)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save(str(folder / "tokenizer.json"))
    RobertaTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def xlmr_tokenizer(folder: Path):
    """A SentencePiece (unigram, Metaspace) tokenizer with XLM-R's pair template."""
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import AutoTokenizer, XLMRobertaTokenizerFast

    uni = SentencePieceUnigramTokenizer()
    uni.train_from_iterator(CORPUS, vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>")
    uni.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    folder.mkdir(parents=True, exist_ok=True)
    uni.save(str(folder / "tokenizer.json"))
    XLMRobertaTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def wordpiece_tokenizer(folder: Path):
    """A small BERT WordPiece tokenizer (ELECTRA uses BERT's), ``[CLS] A [SEP] B [SEP]`` with types 0 / 1."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer, ElectraTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1)
    folder.mkdir(parents=True, exist_ok=True)
    wp.save(str(folder / "tokenizer.json"))
    ElectraTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


TOKENIZERS = {"electra": wordpiece_tokenizer, "roberta": roberta_tokenizer, "xlm-roberta": xlmr_tokenizer}
