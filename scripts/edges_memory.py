"""Compiled memory of the all-edge backward (EAP / EAP-IG) for MiniLM-L12 shapes (post-LN) or
gte-reranker-modernbert-base shapes (``--arch modernbert``: pre-LN, 22 layers, d_model 768), from XLA's memory
analysis (no run; counts do not depend on load):

    python scripts/edges_memory.py --pairs 16 --pos 128 --steps 5
    python scripts/edges_memory.py --arch modernbert --pairs 4 --pos 128 --steps 5

Prints, per method, the compiled program's argument, output and temporary bytes (the peak the program needs
beyond its inputs is ``temp``) for ``--pairs`` pairs in one call (`edge_gradients` vmaps over the pairs).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp


def _abstract_data(cfg, n_pairs: int, n_pos: int):
    from jaxmech.patching.edges import EdgeData

    L, H, d = cfg.n_layers, cfg.n_heads, cfg.d_model
    f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    i = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
    P, T = n_pairs, n_pos
    return EdgeData(i(P, T), i(P, T), i(P, T), f(P, T), f(P, L, T, 1), f(P, L, T, 1), f(P, L + 1, T, d),
                    f(P, T, d), f(P, T, d), f(P, L, T, H, d), f(P, L, T, H, d), f(P, L, T, d), f(P, L, T, d),
                    f(P, d), f(P), f(P), f(P, 1, T))


def random_model(arch: str, layers: int | None):
    """A randomly initialised model of the architecture's shapes (MiniLM-L12, or gte-reranker-modernbert-base)."""
    if arch == "modernbert":
        from flax import nnx

        from jaxmech.models.modernbert import ModernBertConfig, ModernBertCrossEncoder

        n = layers or 22
        cfg = ModernBertConfig(n_layers=n, global_layers=tuple(i % 3 == 0 for i in range(n)))
        return ModernBertCrossEncoder(cfg, rngs=nnx.Rngs(0))
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import build_model

    cfg = EncoderConfig(n_layers=layers or 12, d_model=384, n_heads=12, d_head=32, d_mlp=1536, n_ctx=512)
    return build_model(cfg, "cross", seed=0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--pos", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--layers", type=int, default=None, help="default: 12 (minilm), 22 (modernbert)")
    p.add_argument("--arch", choices=("minilm", "modernbert"), default="minilm")
    args = p.parse_args()
    from jaxmech.patching.edge_attribution import edge_gradients

    model = random_model(args.arch, args.layers)
    cfg = model.cfg
    data = _abstract_data(cfg, args.pairs, args.pos)
    for method, steps in (("eap", 1), ("eap-ig-inputs", args.steps), ("eap-ig-activations", args.steps)):
        compiled = edge_gradients.lower(model, data, method=method, steps=steps).compile()
        m = compiled.memory_analysis()
        gib = lambda b: round(b / 2**30, 3)
        print(json.dumps({"arch": args.arch, "method": method, "steps": steps, "pairs": args.pairs, "pos": args.pos,
                          "layers": cfg.n_layers, "device": jax.devices()[0].device_kind,
                          "argument_gib": gib(m.argument_size_in_bytes),
                          "output_gib": gib(m.output_size_in_bytes), "temp_gib": gib(m.temp_size_in_bytes)}),
              flush=True)


if __name__ == "__main__":
    main()
