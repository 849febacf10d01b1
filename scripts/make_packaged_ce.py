"""python scripts/make_packaged_ce.py ../shared/models/minilm6-ce-distilled jaxmech/demo/minilm6-ce

Writes the packaged cross-encoder (``load_model("packaged-ce")``, see `jaxmech.files`) from an fp32 model
folder: every weight tensor rounded to fp16 (round-to-nearest-even, numpy's ``astype``) in one
``model.safetensors``, and ``config.json``, ``tokenizer.json`` and ``tokenizer_config.json`` copied byte for
byte. jaxmech converts the tensors back to fp32 on loading, so the packaged model *is* the fp16-rounded fp32
model computed in fp32 (not an fp16 computation).

Deterministic: the same input gives a byte-identical folder (tensors in sorted key order, the single metadata
entry ``format: pt``); ``SOURCE.txt`` names the SHA-256 of the fp32 file it came from. The script prints the
SHA-256 of what it wrote and refuses tensors that overflow fp16 (none in MiniLM: |w| < 65504).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json")
SOURCE = "SOURCE.txt"


def sha256(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make(src: Path, dst: Path) -> dict[str, str]:
    """Writes the fp16 folder ``dst`` from the fp32 folder ``src``; returns ``{file: sha256}`` of ``dst``.

    Raises:
        FileNotFoundError: If ``src`` lacks a needed file (named).
        ValueError: If a tensor is not floating point or does not fit fp16 (named).
    """
    import numpy as np
    from safetensors.numpy import load_file, save_file

    for name in (*COPIED, "model.safetensors"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src}: no {name}")
    state = load_file(str(src / "model.safetensors"))
    out = {}
    for key in sorted(state):
        w = state[key]
        if w.dtype != np.float32:
            raise ValueError(f"{src}/model.safetensors: {key} is {w.dtype}, expected float32")
        if np.abs(w).max(initial=0.0) >= np.finfo(np.float16).max:
            raise ValueError(f"{src}/model.safetensors: {key} overflows fp16")
        out[key] = np.ascontiguousarray(w.astype(np.float16))
    dst.mkdir(parents=True, exist_ok=True)
    # one metadata key: safetensors writes a multi-key metadata map in hash order, not reproducibly
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for name in COPIED:
        shutil.copyfile(src / name, dst / name)
    (dst / SOURCE).write_text(
        f"model.safetensors: fp16 (round-to-nearest-even) of an fp32 model.safetensors with sha256 "
        f"{sha256(src / 'model.safetensors')}, written by scripts/make_packaged_ce.py; loaded as fp32.\n"
    )
    for name in (*COPIED, "model.safetensors", SOURCE):
        (dst / name).chmod(0o644)
    return {name: sha256(dst / name) for name in (*COPIED, "model.safetensors", SOURCE)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="fp32 model folder (config.json, model.safetensors, tokenizer files)")
    ap.add_argument("dst", type=Path, help="folder to write (e.g. jaxmech/demo/minilm6-ce)")
    args = ap.parse_args()
    for name, digest in make(args.src, args.dst).items():
        print(f"{digest}  {args.dst / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
