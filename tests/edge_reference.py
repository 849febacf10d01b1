"""Edge patching written as interventions on full forwards, the reference the edge tests check against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import forward_jit as _forward
from conftest import random_pairs

from jaxmech.data.records import AlignedPair
from jaxmech.interventions import AdditiveDelta, PatchSpec, one_hot
from jaxmech.patching import batch_pairs
from jaxmech.patching.caches import run_cached

SITES = frozenset({"result", "mlp_out", "resid_pre", "ln1_scale", "ln2_scale", "normalized_resid_mid",
                   "normalized_resid_post"})


def edge_batch(model, n_pairs: int = 2, seed: int = 3):
    """Random TFC1-shaped pairs for the tiny model."""
    return batch_pairs(random_pairs(n_pairs, model.cfg.d_vocab, seed=seed), buckets=(24, 32), max_length=48)


def hooked_caches(model, batch):
    """The baseline and perturbed runs' captures of `SITES`."""
    _, base = run_cached(model, *map(jnp.asarray, batch.baseline), capture=SITES)
    _, src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=SITES)
    return base, src


def frozen_scales(base, p):
    return [PatchSpec("ln1_scale", base["ln1_scale"][p]), PatchSpec("ln2_scale", base["ln2_scale"][p])]


def reference_edge(model, batch, base, src, p, receiver: str, sender: str, eps=1.0, emb_t=None):
    """Edge ``sender -> receiver`` of pair ``p`` by hooked full forwards (independent of the stack engine): the
    score with ``eps`` times the edge's input change added to the receiver (``emb_t``: with the embeddings'
    output moved that far toward the perturbed run's, for EAP-IG over inputs)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    inputs = [jnp.asarray(a[p]) for a in batch.baseline]
    pm = jnp.asarray(batch.patchable[p], jnp.float32)
    frozen = frozen_scales(base, p)
    # stage A: only the sender differs from the baseline, every other component frozen, scales frozen
    ivs = frozen + [PatchSpec("result", base["result"][p]), PatchSpec("mlp_out", base["mlp_out"][p])]
    if sender == "input":
        ivs.append(PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, L), pm))
    elif sender.startswith("m"):
        ivs.append(PatchSpec("mlp_out", src["mlp_out"][p], one_hot(int(sender[1:]), L), pm))
    else:
        lyr, h = (int(t) for t in sender[1:].split(".h"))
        ivs.append(PatchSpec("result", src["result"][p], one_hot(lyr, L), pm, one_hot(h, H)))
    _, cache_a = _forward(model, *inputs, ivs, capture=SITES)
    # stage B: the change at the receiver's input added to that input only
    blocks = model.blocks
    if receiver == "logits":
        d = cache_a["normalized_resid_post"][-1] - base["normalized_resid_post"][p, -1]
        add = AdditiveDelta("normalized_resid_post", jnp.zeros_like(base["normalized_resid_post"][p]).at[-1].set(d))
    elif receiver.startswith("m"):
        lyr = int(receiver[1:])
        d = cache_a["normalized_resid_mid"][lyr] - base["normalized_resid_mid"][p, lyr]
        z = jnp.zeros((L, d.shape[0], model.cfg.d_mlp))
        add = AdditiveDelta("mlp_pre", z.at[lyr].set(d @ blocks.mlp.W_in[lyr]))
    else:
        head, kind = receiver[1:-1].split("<")
        lyr, h = (int(t) for t in head.split(".h"))
        d = cache_a["resid_pre"][lyr] - base["resid_pre"][p, lyr]
        W = {"q": blocks.attn.W_Q, "k": blocks.attn.W_K, "v": blocks.attn.W_V}[kind][lyr, h]
        z = jnp.zeros((L, d.shape[0], H, model.cfg.d_head))
        add = AdditiveDelta(kind, z.at[lyr, :, h].set(d @ W))
    add = AdditiveDelta(add.site, eps * add.delta)
    if emb_t is not None:
        frozen = frozen + [PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, L), pm, alpha=emb_t)]
    score, _ = _forward(model, *inputs, frozen + [add])
    return score


def planted_model(model, scale: float):
    """``model`` with every head's and MLP's output scaled by ``scale`` (small: the direct edge dominates)."""
    m = jax.tree.map(lambda x: x, model)
    m.blocks.attn.W_O[...] = model.blocks.attn.W_O[...] * scale
    m.blocks.mlp.W_out[...] = model.blocks.mlp.W_out[...] * scale
    return m


def planted_pairs(at_cls: bool):
    """Pairs whose perturbed input changes the [CLS] token (``at_cls``) or only a document token."""
    rng = np.random.RandomState(5)
    pairs = []
    for i in range(2):
        q, d = list(rng.randint(10, 200, 4)), list(rng.randint(10, 200, 8))
        base = [1, *q, 2, *d, 2]
        pert = list(base)
        pert[0 if at_cls else len(q) + 3] = 3 + i
        tt = [0] * (len(q) + 2) + [1] * (len(d) + 1)
        pairs.append(AlignedPair(base, tt, pert, tt, list(range(len(base))), f"c{i}"))
    return batch_pairs(pairs, buckets=(24,), max_length=48)
