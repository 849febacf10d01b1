"""Estimates of every edge's patching effect at once: EAP and EAP-IG (over inputs and over activations).

All three are derivatives of `jaxmech.patching.edges.edge_forward` in its edge coefficients ``alpha``
(``[receiver, sender]``; 0 keeps an edge, 1 patches it):

* ``eap``: ``d score / d alpha`` at ``alpha = 0``. Receiver ``r``'s input is ``x_r + alpha D_s`` with ``D_s`` the
  edge's input change, so this is ``<grad_{x_r} score, T_{s->r}(o_s' - o_s)>``: gradient times difference
  (Syed et al. 2023), the jvp of the exact edge patch (`exact_edge_scores`) in its coefficient. It runs with the
  baseline's differences fixed (``fixed_delta``): at ``alpha = 0`` the current run is the baseline, and
  ``d(alpha D(alpha)) / d alpha = D(0)`` whether or not ``D`` follows ``alpha``; an engine whose fixed stack is a
  constant (pre-LN) then keeps one stack in the backward instead of one per layer.
* ``eap-ig-inputs`` (Hanna et al. 2024): the same product with the gradient averaged over ``steps`` runs whose
  embeddings' output is ``emb + t (emb' - emb)``, ``t`` the midpoints ``(k + 1/2) / steps``; the differences stay
  the baseline's (``fixed_delta``).
* ``eap-ig-activations``: the gradient in ``alpha`` averaged over ``alpha = t`` on every edge (each edge's value
  moved the fraction ``t`` from its current toward its perturbed value), ``t`` the same midpoints: integrated
  gradients along the straight line from the full model to the empty circuit, so the estimates sum to
  ``score(empty circuit) - score(baseline)`` up to the midpoint rule's error (``O(steps^-2)``).

Each returns ``[pair, edge]`` estimated changes of the score (``patched - baseline``); `estimate_edges` runs
pairs in chunks (the backward holds ``~3 L`` stacks of ``[sender, pos, d_model]`` per pair).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxmech import runtime
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import EdgeData, check_edge_model, edge_alpha_gradient

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations")


def midpoints(steps: int) -> np.ndarray:
    """``(k + 1/2) / steps`` for ``k < steps``."""
    return (np.arange(steps) + 0.5) / steps


def _grad_one(model, ex: EdgeData, method: str, steps: int, valid, spans: bool):
    """``[receiver, sender(, group)]`` mean gradient of one pair's score in ``alpha`` along the method's path."""
    if spans:
        valid = jnp.broadcast_to(valid[..., None], (*valid.shape, ex.spans.shape[0]))
    zero = jnp.zeros(valid.shape, jnp.float32)
    if method == "eap":  # at alpha = 0 the current run is the baseline: the fixed stack has the same values
        return edge_alpha_gradient(model, ex, zero, fixed_delta=True)

    def step(total, t):
        if method == "eap-ig-inputs":
            g = edge_alpha_gradient(model, ex, zero, emb_t=t, fixed_delta=True)
        else:
            g = edge_alpha_gradient(model, ex, t * valid)
        return total + g, None

    total, _ = jax.lax.scan(step, zero, jnp.asarray(midpoints(steps), jnp.float32))
    return total / steps


@functools.partial(jax.jit, static_argnames=("method", "steps", "spans"))
def edge_gradients(model, data: EdgeData, *, method: str = "eap", steps: int = 1,
                   spans: bool = False) -> Float[Array, "pair edge"]:
    """Estimated ``patched - baseline`` of every edge for the pairs of ``data`` (vmapped over pairs; one program
    per shape, method, step count and span flag; the IG steps run in a scan, so the program does not grow with
    them). ``spans``: per edge and span group of ``data.spans``, ``[pair, edge, group]``."""
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    valid = jnp.asarray(graph.valid, jnp.float32)
    grads = jax.vmap(lambda ex: _grad_one(model, ex, method, steps, valid, spans))(data)
    return grads[:, graph.edges[:, 0], graph.edges[:, 1]]


MAX_PAIR_CHUNK = 64
"""Most pairs per call `edge_pair_chunk` chooses."""

_PER_PAIR: dict[tuple, tuple[int, int]] = {}


def _program_bytes(model, data: EdgeData, method: str, steps: int, spans: bool) -> tuple[int, int]:
    """``(fixed, per pair)`` bytes of `edge_gradients` from its one-pair program's memory analysis (compiled once
    per model shape, length, method, steps and span groups in a process; not run)."""
    key = (type(model).__name__, model.cfg, tuple(data.spans.shape[1:]), method, steps, spans, jax.default_backend(),
           runtime.current_precision())
    if key not in _PER_PAIR:
        one = data.pair(np.array([0]))
        m = edge_gradients.lower(model, one, method=method, steps=steps, spans=spans).compile().memory_analysis()
        pair_args = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(one))
        per_pair = int(m.temp_size_in_bytes) + int(m.output_size_in_bytes) + pair_args
        _PER_PAIR[key] = (max(0, int(m.argument_size_in_bytes) - pair_args), per_pair)
    return _PER_PAIR[key]


def edge_pair_chunk(model, data: EdgeData, method: str = "eap-ig-inputs", *, steps: int = 5, spans: bool = False,
                    memory_fraction: float = 0.5) -> int:
    """Pairs per `edge_gradients` call: as few calls as fit ``memory_fraction`` of the memory free on the device
    (`jaxmech.runtime.available_memory`; on a CPU the system's), each at most `MAX_PAIR_CHUNK` pairs, the pairs
    spread evenly over the calls (the last call is padded to the same shape).

    The one-pair program is compiled ahead of time (one compile per shape, method, steps, backend and precision in
    a process; XLA's memory analysis, no run): its temporaries and outputs, and each pair's arguments, grow
    linearly with the pairs (the program vmaps over them: 0.89 GiB per pair for MiniLM-L12 at 128 tokens and
    14.2 GiB for 16, EAP), the weights do not. One pair needs no compile.

    Args:
        model: An encoder whose engine defines edges.
        data: `jaxmech.patching.edges.edge_data` of the pairs.
        method: One of `METHODS`.
        steps: IG steps.
        spans: Per span group.
        memory_fraction: Share of the free memory one call may use.

    Raises:
        ValueError: If not even one pair's program fits, naming the bytes (before any estimate runs).
    """
    n = int(data.ids.shape[0])
    if n == 1:
        return 1
    fixed, per_pair = _program_bytes(model, data, method, 1 if method == "eap" else steps, spans)
    free, what = runtime.available_memory()
    fit = int((memory_fraction * free - fixed) // max(per_pair, 1))
    if fit < 1:
        gib = lambda b: f"{b / 2**30:.2f} GiB"
        raise ValueError(f"edge attribution ({method}): one pair of {data.ids.shape[1]} tokens needs about "
                         f"{gib(fixed + per_pair)}, more than {memory_fraction:g} of the {gib(free)} of {what}; "
                         "use shorter pairs (max_length), method 'eap', or a larger machine")
    calls = -(-n // min(fit, MAX_PAIR_CHUNK, n))
    return -(-n // calls)


@runtime.with_precision
def estimate_edges(model, data: EdgeData, method: str = "eap-ig-inputs", *, steps: int = 5,
                   pair_chunk: int | None = None, spans: bool = False) -> np.ndarray:
    """EAP / EAP-IG estimates ``[pair, edge]`` of every edge (see the module docstring).

    Args:
        model: An encoder whose engine defines edges (`jaxmech.patching.edges.check_edge_model`).
        data: `jaxmech.patching.edges.edge_data` of the pairs.
        method: One of `METHODS`.
        steps: IG steps (EAP: ignored).
        pair_chunk: Pairs per call (bounds the backward's memory; the last chunk is padded to it); None: as few
            calls as fit half the free memory (`edge_pair_chunk`, from the compiled one-pair program's memory
            analysis: one extra ahead-of-time compile per shape in a process).
        spans: Per span group of ``data.spans`` too: ``[pair, edge, group]`` (the groups of a partition of the
            positions sum to the edge's estimate for EAP and EAP-IG over inputs).

    Raises:
        ValueError: For an unknown method or ``steps < 1``, before any compute.
    """
    if method not in METHODS:
        raise ValueError(f"edge attribution method {method!r}: expected one of {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"edge attribution: steps={steps} must be >= 1")
    check_edge_model(model)
    steps = 1 if method == "eap" else steps
    n = int(data.ids.shape[0])
    if pair_chunk is None:
        pair_chunk = edge_pair_chunk(model, data, method, steps=steps, spans=spans)
    if pair_chunk < 1:
        raise ValueError(f"edge attribution: pair_chunk={pair_chunk} must be >= 1")
    pair_chunk = min(pair_chunk, n)
    out = []
    for i in range(0, n, pair_chunk):
        idx = np.minimum(np.arange(i, i + pair_chunk), n - 1)
        est = edge_gradients(model, data.pair(idx), method=method, steps=steps, spans=spans)
        out.append(np.asarray(est)[: min(pair_chunk, n - i)])
    return np.concatenate(out, 0)


__all__ = ["MAX_PAIR_CHUNK", "METHODS", "edge_gradients", "edge_pair_chunk", "estimate_edges", "midpoints"]
