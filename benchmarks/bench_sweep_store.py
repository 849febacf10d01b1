"""Which chunked store for sweep results: zarr v3 through tensorstore, or zarr-python 3?

    python benchmarks/bench_sweep_store.py [--chunks 64] [--out benchmarks/results/bench_sweep_store.json]
    PYTHONPATH=/path/to/zarr python benchmarks/bench_sweep_store.py   (zarr-python is not a dependency)

Writes the arrays of a 10,000-pair TFC1 sweep the way `jaxmech.sweeps` does (one zarr chunk = one sweep chunk
of 16 pairs along ``pair``; zstd level 1; NaN beyond each pair's length, lengths drawn like TFC1's, position
axis 384), chunk by chunk, then reads them back whole and one chunk at a time. Same codecs, same layout, same
data for both libraries; xarray over zarr reads through zarr-python, so it is no faster than zarr-python.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

C, L, H, T = 16, 12, 12, 384
# family -> shape after "pair" (E1 block_every, E2 head_all_pos_v, E4 path_to_score, E3 attribution estimate)
ARRAYS = {"block_every": (3, L, T), "head_all_pos_v": (L, H), "path_to_score": (L, H), "head_by_pos_z": (L, T, H)}


def chunk_data(rng, n_pairs: int) -> dict[str, np.ndarray]:
    lengths = np.clip(rng.normal(90, 40, n_pairs).astype(int), 20, T)
    out = {}
    for name, shape in ARRAYS.items():
        x = rng.standard_normal((n_pairs, *shape)).astype(np.float32)
        if T in shape:
            ax = 1 + shape.index(T)
            mask = np.arange(T)[None, :] >= lengths[:, None]
            idx = [None] * x.ndim
            idx[0], idx[ax] = slice(None), slice(None)
            shp = [1] * x.ndim
            shp[0], shp[ax] = n_pairs, T
            x = np.where(mask.reshape(shp), np.nan, x)
        out[name] = x
    return out


def tensorstore_backend(root: Path):
    import tensorstore as ts

    def spec(name, shape=None):
        s = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root / name)}}
        if shape is not None:
            s["metadata"] = {
                "shape": list(shape),
                "data_type": "float32",
                "fill_value": "NaN",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [C, *shape[1:]]}},
                "codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "zstd", "configuration": {"level": 1, "checksum": False}},
                ],
            }
        return s

    def create(n):
        return {k: ts.open(spec(k, (n, *s)), create=True, delete_existing=True).result() for k, s in ARRAYS.items()}

    def write(arrs, start, data):
        futures = [arrs[k][start : start + len(v)].write(v) for k, v in data.items()]
        for f in futures:
            f.result()

    def open_(k):
        return ts.open(spec(k), open=True).result()

    def read(arr, sl=slice(None)):
        return arr[sl].read().result()

    return create, write, open_, read


def zarr_backend(root: Path):
    import zarr
    from zarr.codecs import BytesCodec, ZstdCodec

    def create(n):
        return {
            k: zarr.create_array(
                store=str(root / k),
                shape=(n, *s),
                chunks=(C, *s),
                dtype="float32",
                fill_value=np.nan,
                serializer=BytesCodec(),
                compressors=[ZstdCodec(level=1, checksum=False)],
                zarr_format=3,
            )
            for k, s in ARRAYS.items()
        }

    def write(arrs, start, data):
        for k, v in data.items():
            arrs[k][start : start + len(v)] = v

    def open_(k):
        return zarr.open_array(store=str(root / k), mode="r")

    def read(arr, sl=slice(None)):
        return arr[sl]

    return create, write, open_, read


def measure(name: str, backend, n_chunks: int, seed: int = 0) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"bench_store_{name}_"))
    try:
        create, write, open_, read = backend(root)
        rng = np.random.default_rng(seed)
        data = [chunk_data(rng, C) for _ in range(n_chunks)]
        n = C * n_chunks
        t0 = time.perf_counter()
        arrs = create(n)
        t_create = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k, d in enumerate(data):
            write(arrs, k * C, d)
        t_write = time.perf_counter() - t0
        raw_bytes = sum(v.nbytes for d in data for v in d.values())
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        t0 = time.perf_counter()
        full = {k: read(open_(k)) for k in ARRAYS}
        t_read = time.perf_counter() - t0
        for k in ARRAYS:  # round trip, NaN included
            assert np.concatenate([d[k] for d in data]).tobytes() == np.asarray(full[k]).tobytes(), k
        t0 = time.perf_counter()
        opened = {k: open_(k) for k in ARRAYS}
        reps = 0
        for k in range(0, n_chunks, max(1, n_chunks // 16)):
            for a in opened.values():
                read(a, slice(k * C, (k + 1) * C))
            reps += 1
        t_chunk = (time.perf_counter() - t0) / reps
        return {
            "backend": name,
            "chunks": n_chunks,
            "pairs": n,
            "uncompressed_mb": round(raw_bytes / 2**20, 1),
            "disk_mb": round(disk / 2**20, 1),
            "create_s": round(t_create, 4),
            "write_s_per_chunk": round(t_write / n_chunks, 5),
            "write_mb_per_s": round(raw_bytes / 2**20 / t_write, 1),
            "read_all_s": round(t_read, 3),
            "read_mb_per_s": round(raw_bytes / 2**20 / t_read, 1),
            "read_one_chunk_s": round(t_chunk, 5),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/bench_sweep_store.json")
    args = ap.parse_args()
    import os

    from jaxmech.device import describe_device

    rows = []
    backends = [("tensorstore-zarr3", tensorstore_backend)]
    try:
        import zarr

        backends.append((f"zarr-python-{zarr.__version__}", zarr_backend))
    except ImportError:
        print("zarr-python is not installed: measuring tensorstore only")
    for rep in range(args.repeats):
        for name, backend in backends:
            row = measure(name, backend, args.chunks, seed=rep)
            row["repeat"] = rep
            rows.append(row)
            print(json.dumps(row))
    best = {}
    for name, _ in backends:
        mine = [r for r in rows if r["backend"] == name]
        best[name] = {k: min(r[k] for r in mine) for k in ("write_s_per_chunk", "read_all_s", "read_one_chunk_s")}
    out = {
        "benchmark": "sweep_store",
        "question": "tensorstore-zarr3 vs zarr-python for sweep result chunks",
        "device": describe_device(),
        "load_average": os.getloadavg(),
        "chunk_pairs": C,
        "arrays": {k: [C, *s] for k, s in ARRAYS.items()},
        "rows": rows,
        "best_of_repeats": best,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
