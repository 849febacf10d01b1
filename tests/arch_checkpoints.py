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

EXTRA_SITES = ("embed", "pos_embed", "token_type_embed", "embed_ln_scale", "ln1_scale", "ln2_scale", "pooler_out",
               "result", "attn_scores")
RECORDING_ATTENTION = "jaxmech_recording"


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention, recording the queries and keys it receives (after any rotation), the
    pre-mask scores and the additive mask on the module."""
    import torch

    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    module._jaxmech_record = dict(q=query.detach().numpy(), k=key.detach().numpy(), scores=scores.detach().numpy(),
                                  mask=None if attention_mask is None else attention_mask.detach().numpy())
    weights = scores if attention_mask is None else scores + attention_mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def register_recording_attention():
    """Registers the attention function *and* eager's additive mask for it: without a registered mask function,
    transformers builds no padding mask at all for a custom attention implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(RECORDING_ATTENTION, _recording_attention)
    AttentionMaskInterface.register(RECORDING_ATTENTION, eager_mask)


def recorded_attention(modules, ids_shape) -> dict[str, np.ndarray]:
    """Stacks what `_recording_attention` kept on each layer's attention module: ``attn_scores`` (masked keys
    left NaN: HF adds a finfo.min mask, jaxmech writes MASK_VALUE; both give probability 0), ``rot_q``, ``rot_k``
    (``[batch, layer, pos, head, d_head]``) and the boolean ``allowed`` key mask ``[batch, layer, 1|head, q, k]``."""
    recs = [m._jaxmech_record for m in modules]
    scores = np.stack([r["scores"] for r in recs], 1)
    allowed = np.stack([np.ones_like(r["scores"], bool) if r["mask"] is None
                        else np.broadcast_to(r["mask"] == 0, r["scores"].shape) for r in recs], 1)
    return {"attn_scores": np.where(allowed, scores, np.nan), "allowed": allowed,
            "rot_q": np.stack([r["q"].transpose(0, 2, 1, 3) for r in recs], 1),
            "rot_k": np.stack([r["k"].transpose(0, 2, 1, 3) for r in recs], 1)}


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
    register_recording_attention()
    previous = hf_model.config._attn_implementation
    hf_model.set_attn_implementation(RECORDING_ATTENTION)
    try:
        acts = hf_activations(hf_model, ids, tt, mask)
    finally:
        hf_model.set_attn_implementation(previous)
        for h in handles:
            h.remove()
    acts.update(rec)
    acts.update(recorded_attention([layer.attention.self for layer in trunk.encoder.layer], ids.shape))
    # per-head outputs z_h @ W_O[h] from HF's own output projection (its bias excluded, as the site)
    H = trunk.config.num_attention_heads
    W_O = [layer.attention.output.dense.weight.detach().numpy() for layer in trunk.encoder.layer]
    z = acts["z"]  # [batch, layer, pos, head, d_head]
    acts["result"] = np.stack([np.einsum("bthe,mhe->bthm", z[:, l], W.reshape(W.shape[0], H, -1))
                               for l, W in enumerate(W_O)], 1)

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


MODERNBERT_SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def modernbert_tokenizer(folder: Path):
    """A byte-level BPE tokenizer saved as ModernBERT's folders are: ``tokenizer.json`` whose special tokens sit
    at the end of the vocabulary (as ``[UNK]``..``[MASK]`` = 50280..50284 there), the template
    ``[CLS] A [SEP] B [SEP]`` (types 0 / 1), and a ``tokenizer_config.json`` naming ``PreTrainedTokenizerFast``
    with ModernBERT's special tokens and input names (no token types)."""
    import json

    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import AutoTokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=[])
    bpe.add_special_tokens(MODERNBERT_SPECIALS)
    ids = {t: bpe.token_to_id(t) for t in MODERNBERT_SPECIALS}
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True,
              "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192,
              "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
              "unk_token": "[UNK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(str(folder))


TOKENIZERS = {"electra": wordpiece_tokenizer, "roberta": roberta_tokenizer, "xlm-roberta": xlmr_tokenizer,
              "modernbert": modernbert_tokenizer}
