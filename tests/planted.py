"""Models and inputs with planted answers for the analysis tests (built in memory, nothing downloaded)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmech.config import EncoderConfig
from jaxmech.models.bert import CrossEncoder

CLS, SEP, PAD = 1, 2, 0
VOCAB = 32  # every token is a one-hot embedding direction, so exact matches are exactly recognisable
MATCH_HEAD = (0, 0)


class FakeTokenizer:
    """The two things `PairInputs.from_pieces` and the feature code need: special ids and ``pair_ids``."""

    cls_id, sep_id, pad_id = CLS, SEP, PAD
    max_length = 64

    def pair_ids(self, q, d):
        return [CLS, *q, SEP, *d, SEP], [0] * (len(q) + 2) + [1] * (len(d) + 1)


@functools.lru_cache(maxsize=4)  # one build per session: tests share it read-only
def exact_match_model(*, n_layers: int = 2, seed: int = 0, sharpness: float = 1.0) -> CrossEncoder:
    """A cross-encoder whose head 0.0 attends (almost) only to positions holding its own token.

    Word embeddings are scaled one-hot vectors (``d_model = 64 > VOCAB``), position and segment embeddings are
    zero and the embedding LayerNorm is the identity map's shape, so after LayerNorm each token is a spike in
    its own dimension. Head 0.0's query and key projections read the first 32 dimensions unchanged: the score
    of a key with the same token is ~63 / sqrt(32) = 11, of any other ~ -0.4. A query token with ``m`` copies in
    the document (and itself once) puts ``m / (m + 1)`` of its attention on the document copies. Every other
    head keeps its small random initialisation (near-uniform attention).
    """
    cfg = EncoderConfig(
        n_layers=n_layers,
        d_model=64,
        n_heads=2,
        d_head=32,
        d_mlp=48,
        d_vocab=VOCAB,
        n_ctx=64,
        n_token_types=2,
        act_fn="gelu",
        eps=1e-12,
        num_labels=1,
        pad_token_id=PAD,
        initializer_range=0.02,
    )
    model = CrossEncoder(cfg, rngs=nnx.Rngs(seed))
    model.embed.W_E = nnx.Param(10.0 * jnp.eye(VOCAB, 64))
    model.embed.W_pos = nnx.Param(jnp.zeros((64, 64)))
    model.embed.W_token_type = nnx.Param(jnp.zeros((2, 64)))
    proj = sharpness * jnp.eye(64, 32)
    blocks = model.blocks
    blocks.attn.W_Q = nnx.Param(blocks.attn.W_Q[...].at[0, 0].set(proj))
    blocks.attn.W_K = nnx.Param(blocks.attn.W_K[...].at[0, 0].set(proj))
    return model


def tf_inputs(max_tf: int = 5, n_docs: int = 6, seed: int = 0):
    """Query ``[t, a, b]`` and documents with ``k`` copies of ``t`` among distinct fillers, k = 0..max_tf.

    Returns:
        ``(query_pieces, doc_pieces, x)``: per input the query, the document and ``k``.
    """
    rng = np.random.default_rng(seed)
    qs, ds, xs = [], [], []
    for _ in range(n_docs):
        t, a, b = (int(v) for v in rng.choice(np.arange(3, 10), 3, replace=False))
        fillers = [int(v) for v in rng.choice(np.arange(10, VOCAB), 12, replace=False)]
        for k in range(max_tf + 1):
            doc = list(fillers)
            for j in range(k):
                doc.insert(2 * j + 1, t)
            qs.append([t, a, b])
            ds.append(doc)
            xs.append(k)
    return qs, ds, xs
