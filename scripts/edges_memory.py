"""Compiled memory of the all-edge backward (EAP / EAP-IG) for MiniLM-L12 shapes, from XLA's memory analysis
(no run; counts do not depend on load):

    python scripts/edges_memory.py --pairs 16 --pos 128 --steps 5

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
                    f(P, d), f(P), f(P))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--pos", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--layers", type=int, default=12)
    args = p.parse_args()
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import build_model
    from jaxmech.patching.edge_attribution import edge_gradients

    cfg = EncoderConfig(n_layers=args.layers, d_model=384, n_heads=12, d_head=32, d_mlp=1536, n_ctx=512)
    model = build_model(cfg, "cross", seed=0)
    data = _abstract_data(cfg, args.pairs, args.pos)
    for method, steps in (("eap", 1), ("eap-ig-inputs", args.steps)):
        compiled = edge_gradients.lower(model, data, method=method, steps=steps).compile()
        m = compiled.memory_analysis()
        gib = lambda b: round(b / 2**30, 3)
        print(json.dumps({"method": method, "steps": steps, "pairs": args.pairs, "pos": args.pos,
                          "layers": args.layers, "argument_gib": gib(m.argument_size_in_bytes),
                          "output_gib": gib(m.output_size_in_bytes), "temp_gib": gib(m.temp_size_in_bytes)}),
              flush=True)


if __name__ == "__main__":
    main()
