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


def _sender_specs(model, base, src, p, pm, sender: str):
    """Stage A's interventions: every head's ``result`` and MLP's output frozen to the baseline's, then the
    sender's (and, with zero masks, every other sender kind's) perturbed value: one program for every sender."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    lyr, h, kind = 0, 0, sender[0]
    if kind == "m":
        lyr = int(sender[1:])
    elif kind == "a":
        lyr, h = (int(t) for t in sender[1:].split(".h"))
    return [PatchSpec("result", base["result"][p]), PatchSpec("mlp_out", base["mlp_out"][p]),
            PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, L) * (kind == "i"), pm),
            PatchSpec("mlp_out", src["mlp_out"][p], one_hot(lyr, L) * (kind == "m"), pm),
            PatchSpec("result", src["result"][p], one_hot(lyr, L) * (kind == "a"), pm, one_hot(h, H))]


def _receiver_deltas(model, base, cache_a, p, receiver: str):
    """Stage B's additions: the change at the receiver's input added to that input only, as one `AdditiveDelta`
    per receiver kind (zeros for the others: one program for every receiver)."""
    L, H, T = model.cfg.n_layers, model.cfg.n_heads, base["resid_pre"].shape[2]
    blocks = model.blocks
    deltas = {"q": jnp.zeros((L, T, H, model.cfg.d_head)), "k": jnp.zeros((L, T, H, model.cfg.d_head)),
              "v": jnp.zeros((L, T, H, model.cfg.d_head)), "mlp_pre": jnp.zeros((L, T, model.cfg.d_mlp)),
              "normalized_resid_post": jnp.zeros((L, T, model.cfg.d_model))}
    if receiver == "logits":
        d = cache_a["normalized_resid_post"][-1] - base["normalized_resid_post"][p, -1]
        deltas["normalized_resid_post"] = deltas["normalized_resid_post"].at[-1].set(d)
    elif receiver.startswith("m"):
        lyr = int(receiver[1:])
        d = cache_a["normalized_resid_mid"][lyr] - base["normalized_resid_mid"][p, lyr]
        deltas["mlp_pre"] = deltas["mlp_pre"].at[lyr].set(d @ blocks.mlp.W_in[lyr])
    else:
        head, kind = receiver[1:-1].split("<")
        lyr, h = (int(t) for t in head.split(".h"))
        d = cache_a["resid_pre"][lyr] - base["resid_pre"][p, lyr]
        W = {"q": blocks.attn.W_Q, "k": blocks.attn.W_K, "v": blocks.attn.W_V}[kind][lyr, h]
        deltas[kind] = deltas[kind].at[lyr, :, h].set(d @ W)
    return deltas


def reference_edge(model, batch, base, src, p, receiver: str, sender: str, eps=1.0, emb_t=None):
    """Edge ``sender -> receiver`` of pair ``p`` by hooked full forwards (independent of the stack engine): the
    score with ``eps`` times the edge's input change added to the receiver (``emb_t``: with the embeddings'
    output moved that far toward the perturbed run's, for EAP-IG over inputs). Every call runs the same two
    intervention structures (masks select the sender and receiver), so the forwards compile once."""
    L = model.cfg.n_layers
    inputs = [jnp.asarray(a[p]) for a in batch.baseline]
    pm = jnp.asarray(batch.patchable[p], jnp.float32)
    frozen = frozen_scales(base, p)
    # stage A: only the sender differs from the baseline, every other component frozen, scales frozen
    _, cache_a = _forward(model, *inputs, frozen + _sender_specs(model, base, src, p, pm, sender), capture=SITES)
    # stage B: the change at the receiver's input added to that input only
    adds = [AdditiveDelta(site, eps * d) for site, d in _receiver_deltas(model, base, cache_a, p, receiver).items()]
    t = jnp.float32(0.0 if emb_t is None else emb_t)
    emb = PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, L), pm, alpha=t)
    score, _ = _forward(model, *inputs, frozen + [emb] + adds)
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
