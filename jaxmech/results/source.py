"""What the figures and the report read: labelled arrays, the axes and labels of stored results (from the run's
meta and the family registry), and a small results-source protocol.

Two kinds of results exist: a run directory of the sweeps results store (``jaxmech.results.open``; the
contract: ``run.meta``, ``run.families``, ``run[family]`` with ``.dims``, ``run.pairs``, ``run.analyses``) and
the ``.npz`` that ``jaxmech patch`` writes (one array per family, TransformerLens shapes, ``by_type:<family>``
token-type means, ``meta`` JSON). `open_results` turns either into a `ResultsSource`; any object with the
store's attributes (an in-memory fake in the tests) is wrapped by `StoreSource`.

Axis names follow the patching results: ``pair``, ``component``, ``layer``, ``pos``, ``head``; aggregating
positions by the paper's token types replaces ``pos`` with ``token_type``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

_PATH_LAYOUTS = {"path_to_score": "lh", "path_to_heads": "lh", "path_components_to_heads": "clp"}


class ResultsError(ValueError):
    """Results that cannot be read: a missing family or analysis, a malformed file (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Labeled:
    """An array with named axes and optional labels along them.

    Attributes:
        values: The array.
        dims: One name per axis (``"pair"``, ``"component"``, ``"layer"``, ``"pos"``, ``"head"``,
            ``"token_type"``, ...).
        coords: Labels along some axes (``{"component": ("resid_pre", ...), "token_type": ("CLS", ...)}``).
        name: What it is (the family name).
        metric: The value's meaning, shown on colour bars (``"normalized"``, ``"difference"``, ``"raw"``).
    """

    values: np.ndarray
    dims: tuple[str, ...]
    coords: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    name: str = ""
    metric: str = "normalized"

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "dims", tuple(self.dims))
        if values.ndim != len(self.dims):
            raise ResultsError(f"{self.name or 'array'}: {values.ndim} axes {values.shape} but dims {self.dims}")
        for dim, labels in self.coords.items():
            if dim in self.dims and len(labels) != values.shape[self.dims.index(dim)]:
                raise ResultsError(
                    f"{self.name or 'array'}: {len(labels)} labels for axis {dim!r} of length "
                    f"{values.shape[self.dims.index(dim)]}"
                )

    def axis(self, dim: str) -> int:
        """Index of the axis named ``dim``.

        Raises:
            ResultsError: If there is no such axis.
        """
        if dim not in self.dims:
            raise ResultsError(f"{self.name or 'array'} has no axis {dim!r} (axes: {self.dims})")
        return self.dims.index(dim)

    def labels(self, dim: str) -> list[str]:
        """Labels along ``dim`` (its coords, else ``0..n-1``)."""
        n = self.values.shape[self.axis(dim)]
        given = self.coords.get(dim)
        return [str(x) for x in given] if given is not None else [str(i) for i in range(n)]

    def mean_over(self, dim: str) -> Labeled:
        """Averages over ``dim``, ignoring NaN (all-NaN stays NaN)."""
        ax = self.axis(dim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.nanmean(np.asarray(self.values, np.float64), axis=ax)
        return dataclasses.replace(
            self,
            values=values,
            dims=self.dims[:ax] + self.dims[ax + 1 :],
            coords={k: v for k, v in self.coords.items() if k != dim},
        )

    def select(self, dim: str, index: int | str) -> Labeled:
        """One slice along ``dim``, by position or by label."""
        ax = self.axis(dim)
        if isinstance(index, str):
            labels = self.labels(dim)
            if index not in labels:
                raise ResultsError(f"{self.name or 'array'}: no {dim} {index!r} (have {labels})")
            index = labels.index(index)
        return dataclasses.replace(
            self,
            values=np.take(self.values, index, axis=ax),
            dims=self.dims[:ax] + self.dims[ax + 1 :],
            coords={k: v for k, v in self.coords.items() if k != dim},
        )


def base_family(key: str) -> str:
    """The patching family of a stored result key: the results store names attribution estimates
    ``attribution:<family>`` and path families with receivers ``<family>_<q|k|v>``."""
    name = key.split(":")[-1]
    for fam in _PATH_LAYOUTS:
        if name.startswith(fam + "_") and name[len(fam) + 1 :] in ("q", "k", "v"):
            return fam
    return name


def family_info(meta: dict, key: str) -> dict:
    """What the run's meta says about one result key: ``name`` (family), ``method``, ``receivers``,
    ``receiver_input`` (from the store's ``families``/``config``, or the flat meta of a ``jaxmech patch``
    file)."""
    name = base_family(key)
    info = {
        "name": name,
        "method": "attribution" if key.startswith("attribution:") else meta.get("method", "exact"),
        "receivers": meta.get("receivers") or [],
        "receiver_input": meta.get("receiver_input", ""),
    }
    cfg = meta.get("config")
    for fam in cfg.get("families", []) if isinstance(cfg, dict) else []:
        if not isinstance(fam, dict) or fam.get("name") != name:
            continue
        method = fam.get("method", "exact")
        suffix = f"_{fam.get('receiver_input')}" if fam.get("receivers") else ""
        if key in (name + suffix, f"attribution:{name}") or (method == "attribution") == key.startswith("attribution:"):
            info.update(
                method=method,
                receivers=list(fam.get("receivers") or []),
                receiver_input=fam.get("receiver_input", "") if fam.get("receivers") else "",
            )
            break
    return info


def normalize_meta(meta: dict) -> dict:
    """Flat run meta for display and comparison: ``model`` (id string), ``model_folder``, ``kind``,
    ``n_layers``, ``n_heads``, ``weights_hash``, ``dataset``, ``dataset_hash``; the store's nested
    ``model``/``datasets`` entries are kept as ``model_info``/``datasets``."""
    out = dict(meta)
    model = meta.get("model")
    if isinstance(model, dict):
        out["model_info"] = model
        out["model"] = str(model.get("id") or model.get("folder") or "")
        out["model_folder"] = model.get("folder")
        for k in ("kind", "n_layers", "n_heads"):
            if model.get(k) is not None:
                out.setdefault(k, model[k])
        if model.get("weights_sha256"):
            out.setdefault("weights_hash", "sha256:" + str(model["weights_sha256"]))
    ds = meta.get("datasets")
    if isinstance(ds, list) and ds and "dataset" not in meta:
        out["dataset"] = ", ".join(f"{d.get('name')} ({d.get('pairs')} pairs)" for d in ds if isinstance(d, dict))
    if meta.get("dataset_sha256") and "dataset_hash" not in meta:
        out["dataset_hash"] = "sha256:" + str(meta["dataset_sha256"])
    if "direction" in meta and "reverse" not in meta:
        out["reverse"] = meta["direction"] not in ("forward", "denoise", "baseline<-perturbed")
    return out


def family_dims(family: str) -> tuple[str, ...]:
    """Axis names of a family's per-pair result (without the pair axis), from the family registry.

    Args:
        family: A family name or a stored key (``attribution:head_by_pos_z``, ``path_to_heads_k``).

    Raises:
        ResultsError: For an unknown family name.
    """
    from jaxmech.patching.families import UnknownFamilyError, get_family

    try:
        return tuple(get_family(base_family(family)).axes)
    except UnknownFamilyError as err:
        raise ResultsError(str(err)) from None


def family_components(family: str) -> tuple[str, ...] | None:
    """Names along a family's component axis (``block_every``: resid_pre, attn_out, mlp_out), or None."""
    from jaxmech.patching.families import REGISTRY

    fam = REGISTRY.get(base_family(family))
    return tuple(fam.sites) if fam is not None and len(fam.sites) > 1 else None


def coords_for(family: str, dims: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Axis labels of a family's array: the component names of multi-site families (e.g. ``block_every``)."""
    comps = family_components(family)
    return {"component": comps} if comps is not None and "component" in dims else {}


@runtime_checkable
class ResultsSource(Protocol):
    """What the figures and the report read from a run."""

    path: Path
    meta: dict
    families: list[str]
    pairs: dict[str, Any]
    analyses: dict[str, dict]

    def array(self, family: str) -> Labeled:
        """The family's per-pair effects with a leading ``pair`` axis."""
        ...

    def pair_mean(self, family: str) -> tuple[Labeled, int]:
        """The family averaged over unflagged pairs, and the number of pairs averaged."""
        ...

    def by_token_type(self, family: str) -> Labeled | None:
        """Pair-averaged effects with ``pos`` replaced by ``token_type``, or None when types are unknown."""
        ...


def _missing_family(path: Path, family: str, have: Sequence[str]) -> ResultsError:
    return ResultsError(f"{path}: no results for family {family!r} (this run has: {', '.join(have) or 'none'})")


class StoreSource:
    """A `ResultsSource` over a results-store run object (``jaxmech.results.open`` or anything shaped like it)."""

    def __init__(self, run: Any, path: str | Path | None = None):
        self._run = run
        if path is None:
            path = next((getattr(run, a) for a in ("path", "root", "run_dir") if getattr(run, a, None)), "<run>")
        self.path = Path(path)
        self.meta = normalize_meta(dict(getattr(run, "meta", {}) or {}))
        self.families = list(getattr(run, "families", []) or [])
        self.pairs = dict(getattr(run, "pairs", {}) or {})
        try:
            self.analyses = dict(getattr(run, "analyses", {}) or {})
        except (ValueError, UnicodeDecodeError):  # a malformed file: read again to name it precisely
            self.analyses = read_analyses_dir(self.path / "analyses")
        if not self.analyses and (self.path / "analyses").is_dir():
            self.analyses = read_analyses_dir(self.path / "analyses")

    def _stored(self, family: str):
        if family not in self.families:
            raise _missing_family(self.path, family, self.families)
        arr = self._run[family]
        shape = tuple(getattr(arr, "shape", np.shape(arr)))
        dims = tuple(getattr(arr, "dims", None) or ("pair", *family_dims(family)))
        if len(dims) != len(shape):
            raise ResultsError(f"{self.path}: family {family!r} has shape {shape} but axes {dims}")
        return arr, shape, dims

    def _keep(self, n: int) -> np.ndarray:
        flagged = self.pairs.get("flagged")
        if flagged is None or len(flagged) != n:
            return np.ones(n, bool)
        return ~np.asarray(flagged, bool)

    def _chunks(self, arr, n: int):
        """``(slice, float64 block)`` of stored pairs, one stored chunk at a time (memory bounded by a chunk)."""
        step = int(getattr(arr, "chunk_pairs", 0) or 0) or max(1, min(n, 256))
        if not hasattr(arr, "__getitem__"):
            yield slice(0, n), np.asarray(arr, np.float64)
            return
        for start in range(0, n, step):
            sl = slice(start, min(start + step, n))
            yield sl, np.asarray(arr[sl], np.float64)

    def array(self, family: str) -> Labeled:
        """The family's effects ``[pair, ...]`` with the store's axis names (everything in memory).

        Raises:
            ResultsError: If the run has no such family or its axes do not match its shape.
        """
        arr, _, dims = self._stored(family)
        values = np.asarray(arr, np.float64)
        return Labeled(
            values, dims, coords_for(family, dims), name=family, metric=self.meta.get("metric", "normalized")
        )

    def pair_mean(self, family: str) -> tuple[Labeled, int]:
        """Mean over unflagged pairs (NaN ignored), read one stored chunk at a time; and how many pairs."""
        arr, shape, dims = self._stored(family)
        keep = self._keep(shape[0])
        total = np.zeros(shape[1:])
        count = np.zeros(shape[1:])
        for sl, x in self._chunks(arr, shape[0]):
            x = x[keep[sl]]
            ok = np.isfinite(x)
            total += np.where(ok, x, 0).sum(0)
            count += ok.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        dims = dims[1:]
        return Labeled(
            mean, dims, coords_for(family, dims), name=family, metric=self.meta.get("metric", "normalized")
        ), int(keep.sum())

    def by_token_type(self, family: str) -> Labeled | None:
        """Token-type means over unflagged pairs from the per-pair ``token_types`` column, one stored chunk at
        a time (None when the run has no token types or the family no position axis)."""
        from jaxmech.patching.summaries import TOKEN_TYPE_ORDER, mean_by_token_type

        types = self.pairs.get("token_types")
        arr, shape, dims = self._stored(family)
        if types is None or "pos" not in dims:
            return None
        keep = self._keep(shape[0])
        pos = dims.index("pos")
        out_shape = (*[s for d, s in zip(dims[1:], shape[1:], strict=True) if d != "pos"], len(TOKEN_TYPE_ORDER))
        total = np.zeros(out_shape)
        count = np.zeros(out_shape)
        for sl, x in self._chunks(arr, shape[0]):
            k = keep[sl]
            if not k.any():
                continue
            chunk_types = [list(t) for t, kk in zip(types[sl], k, strict=True) if kk]
            # per pair and type: the mean over that type's positions (as mean_by_token_type), summed over pairs
            x = x[k]
            for i, t in enumerate(chunk_types):
                m, _ = mean_by_token_type(x[i : i + 1], [t], pos_axis=pos)
                ok = np.isfinite(m)
                total += np.where(ok, m, 0)
                count += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        out_dims = tuple(d for d in dims if d not in ("pair", "pos")) + ("token_type",)
        coords = {**coords_for(family, out_dims), "token_type": TOKEN_TYPE_ORDER}
        return Labeled(mean, out_dims, coords, name=family, metric=self.meta.get("metric", "normalized"))


class NpzSource:
    """A `ResultsSource` over the ``.npz`` written by ``jaxmech patch``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ResultsError(f"{self.path}: results file not found")
        try:
            with np.load(self.path, allow_pickle=False) as z:
                self._arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise ResultsError(f"{self.path}: not a readable .npz ({err})") from None
        try:
            self.meta = normalize_meta(json.loads(str(self._arrays["meta"])) if "meta" in self._arrays else {})
        except json.JSONDecodeError as err:
            raise ResultsError(f"{self.path}: malformed meta JSON ({err})") from None
        reserved = {
            "score_baseline",
            "score_perturbed",
            "lengths",
            "names",
            "flagged",
            "meta",
            "token_type_names",
            "token_type_pair_counts",
        }
        self.families = [k for k in self._arrays if ":" not in k and k not in reserved]
        sb = np.atleast_1d(self._arrays.get("score_baseline", np.zeros(0)))
        self._single = np.ndim(self._arrays.get("score_baseline", np.zeros(0))) == 0
        self.pairs = {
            "name": np.atleast_1d(self._arrays.get("names", np.arange(len(sb)).astype(str))),
            "score_baseline": sb,
            "score_perturbed": np.atleast_1d(self._arrays.get("score_perturbed", np.zeros(0))),
            "length": np.atleast_1d(self._arrays.get("lengths", np.zeros(0, int))),
            "flagged": np.atleast_1d(self._arrays.get("flagged", np.zeros(len(sb), bool))),
        }
        self.analyses: dict[str, dict] = {}

    def array(self, family: str) -> Labeled:
        """The family's effects ``[pair, ...]`` (a single-triple file gets a pair axis of length 1).

        Raises:
            ResultsError: If the file has no such family.
        """
        if family not in self.families:
            raise _missing_family(self.path, family, self.families)
        values = np.asarray(self._arrays[family], np.float64)
        dims = family_dims(family)
        if self._single:
            values = values[None]
        dims = ("pair", *dims)
        if len(dims) != values.ndim:
            raise ResultsError(f"{self.path}: family {family!r} has shape {values.shape}, expected axes {dims}")
        return Labeled(
            values, dims, coords_for(family, dims), name=family, metric=self.meta.get("metric", "normalized")
        )

    def pair_mean(self, family: str) -> tuple[Labeled, int]:
        """Mean over unflagged pairs (NaN ignored); and how many pairs."""
        full = self.array(family)
        flagged = self.pairs.get("flagged")
        keep = ~np.asarray(flagged, bool) if flagged is not None and len(flagged) == full.values.shape[0] else None
        if keep is not None:
            full = dataclasses.replace(full, values=full.values[keep])
        return full.mean_over("pair"), int(full.values.shape[0])

    def by_token_type(self, family: str) -> Labeled | None:
        """The ``by_type:<family>`` means ``jaxmech patch`` stored (None when it had no token types)."""
        key = f"by_type:{family}"
        if key not in self._arrays:
            if family not in self.families:
                raise _missing_family(self.path, family, self.families)
            return None
        names = tuple(str(n) for n in self._arrays["token_type_names"])
        dims = tuple(d for d in family_dims(family) if d != "pos") + ("token_type",)
        return Labeled(
            self._arrays[key],
            dims,
            {**coords_for(family, dims), "token_type": names},
            name=family,
            metric=self.meta.get("metric", "normalized"),
        )


def open_results(results: str | Path | ResultsSource | Any) -> ResultsSource:
    """Opens results for plotting: a `ResultsSource`, a store run object, a run directory or a ``.npz``.

    Args:
        results: A ``jaxmech patch`` ``.npz``, a run directory of the results store, a run object, or a source.

    Raises:
        ResultsError: If the path does not exist or is neither kind.
    """
    if isinstance(results, (NpzSource, StoreSource)) or (
        not isinstance(results, (str, Path)) and isinstance(results, ResultsSource)
    ):  # any source (e.g. a jaxmech.plot.view.PairView)
        return results
    if not isinstance(results, (str, Path)):
        if hasattr(results, "families") and hasattr(results, "__getitem__"):
            return StoreSource(results)
        raise ResultsError(f"cannot read results from a {type(results).__name__}")
    path = Path(results)
    if not path.exists():
        raise ResultsError(f"{path}: no such results file or run directory")
    if path.is_file():
        if path.suffix != ".npz":
            raise ResultsError(f"{path}: expected a .npz from `jaxmech patch` or a run directory")
        return NpzSource(path)
    from jaxmech.results.run import open as open_run

    try:
        run = open_run(path)
    except (OSError, ValueError, KeyError) as err:
        raise ResultsError(f"{path}: not a readable run directory ({type(err).__name__}: {err})") from None
    return StoreSource(run, path)


def read_analyses_dir(folder: str | Path) -> dict[str, dict]:
    """Every ``<name>.json`` in a folder (``<run_dir>/analyses``), keyed by file stem.

    Raises:
        ResultsError: If the folder is missing, or a file is not a JSON object (file, line and column named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such analyses folder")
    out = {}
    for f in sorted(folder.glob("*.json")):
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ResultsError(f"{f}:{err.lineno}:{err.colno}: malformed JSON ({err.msg})") from None
        except UnicodeDecodeError as err:
            raise ResultsError(f"{f}: not UTF-8 text ({err})") from None
        if not isinstance(obj, dict):
            raise ResultsError(f"{f}: expected a JSON object, got {type(obj).__name__}")
        out[f.stem] = obj
    return out


def read_analysis(source: ResultsSource, name: str) -> dict:
    """One analysis JSON of a run, checked for the ``analysis`` key.

    Raises:
        ResultsError: If it is missing or not a JSON object.
    """
    if name not in source.analyses:
        raise ResultsError(
            f"{source.path}: no analysis {name!r} (analyses/{name}.json; this run has: "
            f"{', '.join(sorted(source.analyses)) or 'none'})"
        )
    obj = source.analyses[name]
    if not isinstance(obj, dict):
        raise ResultsError(f"{source.path}: analyses/{name}.json is not a JSON object")
    return obj
