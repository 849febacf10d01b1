"""Integrity of a run folder's chunks: what each chunk wrote, recorded in its marker, and checked on reading.

When a sweep chunk is written, its completion marker (``done/chunk-<k>``) records every stored file the chunk
wrote (`chunk_files`: path under ``arrays/``, size in bytes and sha256). A stored chunk that holds only the
array's fill value is not written by tensorstore, so it is not recorded either (and reads as that value).

* `check_run` (``full=False``): every recorded file is present with its recorded size. Cheap (one ``stat``
  per file); done by `jaxmech.results.open` and by a resumed sweep, which recomputes the chunks that fail.
* `check_run` (``full=True``): the same plus every file's sha256 (reads every byte): ``jaxmech verify RUN``.

A marker without a record (written by an older jaxmech) cannot be checked and is reported as such.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from jaxmech.results.store import ARRAYS, DONE


class IntegrityError(ValueError):
    """A run folder's chunks do not hold what their markers recorded; the message names chunks and files."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _chunk_key(index: int, ndim: int) -> str:
    """zarr v3 default chunk key (separator ``/``) of chunk ``index`` along ``pair`` (one chunk elsewhere)."""
    return "/".join(["c", str(index), *(["0"] * (ndim - 1))])


def _layout(array_dir: Path) -> tuple[int, int]:
    """(ndim, pairs per stored chunk) of a zarr v3 array folder."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    return len(meta["shape"]), int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])


def chunk_files(root: str | os.PathLike, start: int, stop: int) -> dict[str, list]:
    """The stored files holding pair rows ``start:stop`` of every array of a run folder.

    Args:
        root: The run folder.
        start: First pair row.
        stop: One past the last pair row.

    Returns:
        ``{path under arrays/: [size in bytes, sha256]}`` of the files that exist (a stored chunk equal to
        the fill value is not written, so it is absent here too).
    """
    arrays = Path(root) / ARRAYS
    out: dict[str, list] = {}
    for array_dir in sorted(p for p in arrays.iterdir() if (p / "zarr.json").is_file()):
        ndim, per_chunk = _layout(array_dir)
        for index in range(start // per_chunk, (stop - 1) // per_chunk + 1):
            rel = f"{array_dir.name}/{_chunk_key(index, ndim)}"
            path = arrays / rel
            if path.is_file():
                out[rel] = [path.stat().st_size, _sha256(path)]
    return out


@dataclasses.dataclass
class RunCheck:
    """What `check_run` found.

    Attributes:
        n_chunks: Chunks in the run.
        done: Chunks with a completion marker.
        bad: Chunk -> what is wrong with it (missing file, wrong size, wrong checksum).
        unrecorded: Marked chunks whose marker records no files (older jaxmech: not checkable).
        files: Files checked.
        full: Whether checksums were compared.
        folder: Problems of the run folder itself (a missing pair table or array).
    """

    n_chunks: int
    done: list[int]
    bad: dict[int, list[str]]
    unrecorded: list[int]
    files: int
    full: bool
    folder: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The folder is whole and every marked chunk holds what its marker recorded."""
        return not self.bad and not self.folder

    @property
    def missing(self) -> list[int]:
        """Chunks without a completion marker (not computed yet)."""
        return sorted(set(range(self.n_chunks)) - set(self.done))

    def describe(self, limit: int = 3) -> str:
        """One line: the folder's problems, the failing chunks and their first problems."""
        items = [f"chunk {k}: {'; '.join(p[:2])}" for k, p in sorted(self.bad.items())[:limit]]
        more = f" (and {len(self.bad) - limit} more chunks)" if len(self.bad) > limit else ""
        parts = list(self.folder)
        if self.bad:
            parts.append(f"{len(self.bad)} of {len(self.done)} completed chunks fail their check: "
                         + ", ".join(items) + more)
        return "; ".join(parts)


def read_marker(root: Path, chunk: int) -> dict:
    """A chunk's completion marker ({} when it is empty or unreadable)."""
    try:
        return json.loads((root / DONE / f"chunk-{chunk:06d}").read_text() or "{}")
    except (OSError, ValueError):
        return {}


def check_chunk(root: Path, record: dict[str, list], *, full: bool = False) -> list[str]:
    """Problems of one chunk's recorded files (empty: it holds what it recorded)."""
    problems = []
    for rel, (size, digest) in record.items():
        path = Path(root) / ARRAYS / rel
        try:
            actual = path.stat().st_size
        except OSError:
            problems.append(f"{ARRAYS}/{rel} is missing")
            continue
        if actual != size:
            problems.append(f"{ARRAYS}/{rel} has {actual} bytes, {size} were written")
        elif full and _sha256(path) != digest:
            problems.append(f"{ARRAYS}/{rel} does not match its sha256")
    return problems


def check_run(root: str | os.PathLike, *, full: bool = False) -> RunCheck:
    """Checks every marked chunk of a run folder against its marker (see the module docstring).

    Args:
        root: The run folder (with ``meta.json``).
        full: Also compare checksums (reads every stored byte).

    Returns:
        A `RunCheck`.

    Raises:
        FileNotFoundError: If ``root`` is not a sweep run folder (no ``meta.json``).
    """
    root = Path(root)
    if not (root / "meta.json").is_file():
        raise FileNotFoundError(f"{root}: not a sweep run folder (no meta.json)")
    meta = json.loads((root / "meta.json").read_text())
    folder = root / DONE
    done = sorted(int(p.name[len("chunk-"):]) for p in folder.iterdir() if p.name.startswith("chunk-")) \
        if folder.is_dir() else []
    bad, unrecorded, files = {}, [], 0
    for k in done:
        marker = read_marker(root, k)
        if "files" not in marker:
            unrecorded.append(k)
            continue
        files += len(marker["files"])
        problems = check_chunk(root, marker["files"], full=full)
        if problems:
            bad[k] = problems
    folder_problems = [f"{name} is missing" for name in ("pairs.npz",) if not (root / name).is_file()]
    for fam in meta.get("families", []):
        names = [fam.get("effects"), fam.get("raw"), *fam.get("verify", {}).values()]
        missing = [n for n in names if n and not (root / ARRAYS / n / "zarr.json").is_file()]
        folder_problems += [f"{ARRAYS}/{n} is missing" for n in missing]
    return RunCheck(int(meta["n_chunks"]), done, bad, unrecorded, files, full, folder_problems)
