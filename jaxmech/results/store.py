"""The on-disk store of a sweep: zarr v3 arrays written through tensorstore, chunk by chunk.

Layout of a run folder::

    meta.json                run metadata (`jaxmech.results.meta.RunMeta`: config, fingerprint, model, datasets, ...)
    pairs.npz                the static per-pair table (dataset, qid, doc id, lengths, token types, ...)
    arrays/<name>/           zarr v3 arrays, chunked along ``pair`` by ``pairs_per_chunk`` (one stored chunk =
                             one sweep chunk), with named dimensions (``dimension_names``):
        effects.<family>         metric values   [pair, ...]
        raw.<family>             patched scores  [pair, ...]
        verify.<family>.*        exact verification of attribution estimates
        pairs.score_baseline / pairs.score_perturbed / pairs.flagged
    done/chunk-<k>           completion markers, created (atomically) after every array of chunk k is written;
                             each records the files the chunk wrote (size, sha256; `jaxmech.results.integrity`)
    processes/<i>.json       timings of each process
    complete.json            written when every chunk is done (by process 0)
    analyses/<name>.json     analysis steps

A chunk is complete exactly when its marker exists: data first, then the marker by an atomic rename, so a
killed run leaves each chunk either complete or absent (an unmarked chunk is recomputed and rewritten whole;
chunks are whole zarr chunks, never read-modify-written). Processes write disjoint chunks.

Why tensorstore: it is installed already (orbax-checkpoint depends on it), and on this project's chunk shapes
it wrote and read faster than zarr-python 3 (``benchmarks/bench_sweep_store.py``; numbers in the README).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmech.files import atomic_write

ARRAYS = "arrays"
DONE = "done"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes a file through `jaxmech.files.atomic_write` (never half-written; permissions from the umask)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`atomic_write_text` of indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """`numpy.savez` to a temporary file, then renamed."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(x):
    if isinstance(x, np.integer | np.floating | np.bool_):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _spec(path: Path, create: bool = False, shape=None, chunks=None, dtype=None, dims=None, fill=None) -> dict:
    spec: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    if create:
        fill_value = bool(fill) if dtype == "bool" else (None if fill is None else fill)
        if isinstance(fill_value, float) and np.isnan(fill_value):
            fill_value = "NaN"
        spec["metadata"] = {
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "dimension_names": list(dims),
            "fill_value": fill_value,
            "codecs": [
                {"name": "bytes", "configuration": {"endian": "little"}} if dtype != "bool" else {"name": "bytes"},
                {"name": "zstd", "configuration": {"level": 1, "checksum": False}},
            ],
        }
    return spec


class SweepStore:
    """The arrays and completion markers of one run folder.

    Args:
        root: The run folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._open: dict[str, Any] = {}

    # -- arrays ----------------------------------------------------------------------------------------------
    def array_path(self, name: str) -> Path:
        return self.root / ARRAYS / name

    def create_array(
        self,
        name: str,
        shape: Sequence[int],
        dims: Sequence[str],
        *,
        dtype: str = "float32",
        chunk_pairs: int,
        fill: float | int | bool = float("nan"),
    ) -> None:
        """Creates an empty array chunked along its first (``pair``) axis only."""
        import tensorstore as ts

        if len(dims) != len(shape):
            raise ValueError(f"array {name}: {len(dims)} dimension names for shape {tuple(shape)}")
        chunks = [min(chunk_pairs, max(1, shape[0])), *shape[1:]]
        spec = _spec(self.array_path(name), True, shape, chunks, dtype, dims, fill)
        self._open[name] = ts.open(spec, create=True, delete_existing=True).result()

    def array(self, name: str):
        """An open tensorstore of an existing array."""
        import tensorstore as ts

        if name not in self._open:
            path = self.array_path(name)
            if not (path / "zarr.json").exists():
                raise FileNotFoundError(f"{path}: no such array in the run folder {self.root}")
            self._open[name] = ts.open(_spec(path), open=True).result()
        return self._open[name]

    def write_rows(self, values: dict[str, np.ndarray], start: int) -> None:
        """Writes ``values[name]`` at pair rows ``start:start + len``, all arrays concurrently, and waits until
        every write is durable in the kvstore."""
        futures = []
        for name, v in values.items():
            arr = self.array(name)
            futures.append(arr[start : start + len(v)].write(np.ascontiguousarray(v, dtype=arr.dtype.numpy_dtype)))
        for f in futures:
            f.result()

    # -- completion ------------------------------------------------------------------------------------------
    def mark_done(self, chunk: int, info: dict | None = None) -> None:
        """Marks a chunk complete (after its data is written)."""
        atomic_write_json(self.root / DONE / f"chunk-{chunk:06d}", info or {})

    def unmark(self, chunk: int) -> None:
        """Removes a chunk's completion marker (it is then recomputed)."""
        (self.root / DONE / f"chunk-{chunk:06d}").unlink(missing_ok=True)

    def done_chunks(self) -> set[int]:
        """Chunks whose completion marker exists."""
        folder = self.root / DONE
        if not folder.is_dir():
            return set()
        return {int(p.name[len("chunk-") :]) for p in folder.iterdir() if p.name.startswith("chunk-")}

    def clear_done(self) -> None:
        folder = self.root / DONE
        if folder.is_dir():
            for p in folder.iterdir():
                p.unlink()
