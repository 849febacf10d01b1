"""Reading a sweep's results lazily: ``run = jaxmech.results.open(run_dir)``.

    run = jaxmech.results.open("runs/demo")
    run.meta                     # model id + weights hash, datasets + hashes, config, version, device, timings
    run.families                 # ["block_every", "path_to_score", "attribution:head_by_pos_z", ...]
    x = run["block_every"]       # lazy: x.shape, x.dims == ("pair", "component", "layer", "pos")
    x[:100]                      # reads only the stored chunks it needs
    np.asarray(x)                # everything
    run.raw("block_every")       # patched scores, same shape
    run.verify("attribution:head_by_pos_z")   # exact checks of the top-k estimates
    run.pairs                    # per-pair columns (dataset, qid, doc_id, length, token_types, scores, flagged)
    run.analyses                 # {name: JSON dict} from analyses/<name>.json

Pairs are in run order (sorted by length bucket, longest first); ``run.pairs["index"]`` is each pair's index
in its dataset and ``run.pairs["dataset"]`` its dataset. A run still in progress reads too: ``run.complete`` is
False and ``run.done`` marks the pairs whose chunk is complete (the others read as NaN).

Opening checks that every completed chunk's stored files are present with the sizes its marker recorded
(`jaxmech.results.integrity`; one ``stat`` per file) and refuses a run that fails, naming the chunks and files
(``check=False`` opens it anyway, with the failing chunks left out of ``run.done``). ``jaxmech verify RUN``
also compares checksums.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LazyArray", "Run", "open"]


class LazyArray:
    """One stored array; nothing is read until it is indexed or converted.

    Attributes:
        shape: Full shape (``pair`` first).
        dims: Axis names (``("pair", "layer", "pos", "head")``, ...).
        dtype: numpy dtype.
        chunk_pairs: Pairs per stored chunk (read in multiples of it for speed).
    """

    def __init__(self, store, dims: tuple[str, ...]):
        self._ts = store
        self.shape = tuple(int(s) for s in store.shape)
        self.dims = dims
        self.dtype = store.dtype.numpy_dtype
        self.chunk_pairs = int(store.chunk_layout.read_chunk.shape[0])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self._ts[index].read().result())

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dims={self.dims}, dtype={self.dtype})"


class Run:
    """A sweep's run folder (see the module docstring). Use `open`."""

    def __init__(self, root: str | os.PathLike, *, check: bool = True):
        from jaxmech.results.integrity import IntegrityError, check_run
        from jaxmech.results.store import SweepStore

        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root}: not a sweep run folder (no meta.json)")
        self._meta = json.loads(meta_path.read_text())
        self._store = SweepStore(self.root)
        self._fams = {f["key"]: f for f in self._meta["families"]}
        self._pairs: dict[str, np.ndarray] | None = None
        self.check = check_run(self.root)  # what the check on opening found (a RunCheck)
        if check and not self.check.ok:
            raise IntegrityError(
                f"{self.root}: {self.check.describe()}. Rerunning its sweep (jaxmech sweep CONFIG --out "
                f"{self.root}) recomputes them; results.open(..., check=False) reads the other chunks"
            )

    @property
    def meta(self) -> dict[str, Any]:
        """``meta.json``, with ``timings`` (of the finished run, else per process so far)."""
        meta = dict(self._meta)
        complete = self.root / "complete.json"
        if complete.is_file():
            meta["timings"] = json.loads(complete.read_text())
        else:
            meta["timings"] = {
                "processes": {
                    p.stem: json.loads(p.read_text()) for p in sorted((self.root / "processes").glob("*.json"))
                }
            }
        return meta

    @property
    def families(self) -> list[str]:
        """Family keys, in config order."""
        return list(self._fams)

    @property
    def complete(self) -> bool:
        """Whether every chunk is complete (and passed the check on opening)."""
        return (self.root / "complete.json").is_file() and self.check.ok

    @property
    def done(self) -> np.ndarray:
        """``[pair]`` whether each pair's chunk is complete."""
        C = self._meta["pairs_per_chunk"]
        out = np.zeros(self._meta["n_pairs"], bool)
        for k in self._store.done_chunks() - set(self.check.bad):
            out[k * C : (k + 1) * C] = True
        return out

    def _array(self, name: str) -> LazyArray:
        ts = self._store.array(name)
        return LazyArray(ts, tuple(ts.domain.labels))

    def _family(self, family: str) -> dict:
        if family not in self._fams:
            raise KeyError(f"{self.root}: no family {family!r}; this run has {self.families}")
        return self._fams[family]

    def __getitem__(self, family: str) -> LazyArray:
        """Metric values of a family (lazy)."""
        return self._array(self._family(family)["effects"])

    def __contains__(self, family: str) -> bool:
        return family in self._fams

    def raw(self, family: str) -> LazyArray:
        """Patched scores of a family (lazy)."""
        return self._array(self._family(family)["raw"])

    def verify(self, family: str) -> dict[str, Any]:
        """Exact verification of an attribution family: ``index`` ``[pair, component, k, axis]`` (into the
        family's axes after ``pair``), ``estimated`` and ``exact`` patched scores ``[pair, component, k]``,
        and ``components`` / ``index_axes``.

        Raises:
            KeyError: If the family was not verified.
        """
        f = self._family(family)
        if "verify" not in f:
            raise KeyError(f"{self.root}: family {family!r} has no verification (set verify_top_k)")
        out: dict[str, Any] = {part: np.asarray(self._array(name)) for part, name in f["verify"].items()}
        out.update(f["verify_shape"])
        return out

    @property
    def pairs(self) -> dict[str, np.ndarray]:
        """Per-pair columns: ``name``, ``dataset``, ``qid``, ``doc_id``, ``kind``, ``index`` (in the dataset),
        ``length``, ``bucket``, ``runs`` (patched runs), ``token_types`` (object array of lists),
        ``token_type_codes`` / ``token_type_names``, ``score_baseline``, ``score_perturbed``, ``flagged``."""
        if self._pairs is None:
            with np.load(self.root / "pairs.npz") as z:
                table = {k: z[k] for k in z.files}
            names = table["token_type_names"]
            types = np.empty(len(table["name"]), object)
            for i, row in enumerate(table["token_type_codes"]):
                types[i] = [str(names[c]) for c in row if c >= 0]
            table["token_types"] = types
            for col in ("score_baseline", "score_perturbed", "flagged"):
                table[col] = np.asarray(self._array(f"pairs.{col}"))
            self._pairs = table
        return self._pairs

    @property
    def analyses(self) -> dict[str, dict]:
        """``{name: JSON}`` of ``analyses/<name>.json``."""
        folder = self.root / "analyses"
        if not folder.is_dir():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}

    def __repr__(self) -> str:
        return (
            f"Run({str(self.root)!r}, pairs={self._meta['n_pairs']}, families={self.families}, "
            f"complete={self.complete})"
        )


def open(run_dir: str | os.PathLike, *, check: bool = True) -> Run:  # noqa: A001 - the contract's name
    """Opens a sweep's run folder for reading (lazily).

    Args:
        run_dir: The run folder.
        check: Refuse a run whose completed chunks miss stored files or have files of the wrong size (False:
            open it anyway; ``run.check`` says what failed and ``run.done`` leaves those chunks out).

    Raises:
        FileNotFoundError: If the folder holds no sweep.
        jaxmech.results.integrity.IntegrityError: (a ValueError) if ``check`` and a completed chunk fails.
    """
    return Run(run_dir, check=check)
