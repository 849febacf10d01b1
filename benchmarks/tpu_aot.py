"""Compiles the main job's programs for a TPU topology on a host without TPUs (issue 22, item 4).

    pip download --no-deps "libtpu==0.0.42.*" -d /tmp/libtpu      # the libtpu jax 0.10.2 pins (jax[tpu])
    unzip -q /tmp/libtpu/libtpu-*.whl -d /tmp/tpulib                 # not installed: only on this command's path
    PYTHONPATH=/tmp/tpulib:$PWD python benchmarks/tpu_aot.py --topology v5e:2x2

``jax.experimental.topologies`` describes the topology through libtpu's compiler alone (no TPU is opened); each
program of one bucket of `configs/demo.toml`'s families (the sweep's forward, ``finish_prepare``, the exact
kernels' sweep scan, the attribution backward) is lowered with abstract inputs placed on the topology's first
device and compiled ahead of time. Writes ``benchmarks/results/tpu_aot_<topology>.json`` with, per program,
the compile seconds (of this host), XLA's memory analysis and its cost analysis (FLOPs of one loop iteration:
XLA counts a while loop's body once). libtpu is never a dependency of jaxmech.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _stats(compiled) -> dict:
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes), "generated_code_bytes": int(m.generated_code_size_in_bytes),
        "flops_one_iteration": float((cost or {}).get("flops", float("nan"))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="v5e:2x2")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    from jaxmech.files import packaged_model_path
    from jaxmech.hf.loading import load_model

    t0 = time.perf_counter()
    topo = topologies.get_topology_desc(topology_name=args.topology, platform="tpu")
    dev = topo.devices[0]
    out: dict = {"topology": args.topology, "devices": len(topo.devices), "device_kind": dev.device_kind,
                 "topology_seconds": round(time.perf_counter() - t0, 2), "pairs": args.pairs, "length": args.length,
                 "programs": {}}
    lm = load_model(packaged_model_path(), require_tokenizer=True)
    model = lm.model
    on = SingleDeviceSharding(dev)
    spec = lambda shape, dtype=jnp.int32: jax.ShapeDtypeStruct(shape, dtype, sharding=on)
    abstract = lambda tree: jax.tree.map(lambda a: spec(np.shape(a), a.dtype), tree)
    C, T = args.pairs, args.length
    from jaxmech.patching.attribution import activation_gradients
    from jaxmech.patching.caches import restart_capture, run_cached
    from jaxmech.sites import dim_sizes, get_site

    m = abstract(model)
    ids = spec((C, T))
    sites = ("resid_pre", "attn_out", "mlp_out", "v", "z")
    L, sizes = model.cfg.n_layers, dim_sizes(model.cfg, T)
    zeros = {"z": spec((L, *[sizes[d] for d in get_site("z").dims]), jnp.float32)}
    programs = {
        "forward (run_cached, the sweep's captures)": lambda: run_cached.lower(m, ids, ids, ids,
                                                                              capture=restart_capture(sites)),
        "attribution backward (activation_gradients, z)": lambda: activation_gradients.lower(
            m, ids, ids, ids, zeros, spec((C, model.cfg.d_model), jnp.float32)),
    }
    for name, lower in programs.items():
        try:
            t = time.perf_counter()
            lowered = lower()
            t_lower = time.perf_counter() - t
            t = time.perf_counter()
            compiled = lowered.compile()
            out["programs"][name] = {"lower_seconds": round(t_lower, 2),
                                     "compile_seconds": round(time.perf_counter() - t, 2), **_stats(compiled)}
        except Exception as err:  # noqa: BLE001 - reported, the next program is still tried
            out["programs"][name] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
        print(name, out["programs"][name], flush=True)
    path = REPO / "benchmarks" / "results" / f"tpu_aot_{args.topology.replace(':', '_')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
