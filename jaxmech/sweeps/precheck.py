"""Checks of a sweep config against its model's ``config.json``, before anything is loaded or written.

`jaxmech.sweeps.config` checks what a config can check alone (names, types, ranges); this module checks
what depends on the model's shape: receiver heads and head groups (layers and heads), the background's
ablated heads and an attention or projection readout's layer, head and direction size (``[model] max_length``
is capped at the model's positions by the loader; token-type positions of a readout depend on each pair and
are checked when the pairs are aligned). It reads only the
``config.json`` of a local model folder (a hub id that is not downloaded yet is checked when it is loaded).
"""

from __future__ import annotations

import json
from pathlib import Path


def model_shape(path: str) -> dict | None:
    """``{"n_layers", "n_heads", "d_model"}`` from a local model folder's ``config.json`` (None when the
    model is not a local folder with one, or the file does not say)."""
    from jaxmech.files import resolve_model_path

    try:
        config = Path(resolve_model_path(path)) / "config.json"
        raw = json.loads(config.read_text(encoding="utf-8"))
        return {
            "n_layers": int(raw["num_hidden_layers"]),
            "n_heads": int(raw["num_attention_heads"]),
            "d_model": int(raw["hidden_size"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_against_model(cfg) -> None:
    """Checks a `jaxmech.sweeps.config.SweepConfig` against its model's shape (see the module docstring).

    Raises:
        ValueError: Naming the config file, the section and the value, e.g. ``sweep.toml: [[families]][1]
            (path_to_heads): receiver head 99.99 is out of range (layers 1..5, heads 0..11)``.
    """
    from jaxmech.patching.receivers import check_groups, check_receivers

    shape = model_shape(cfg.model.path)
    if shape is None:
        return
    L, H = shape["n_layers"], shape["n_heads"]
    what = f"{cfg.model.path} has {L} layers of {H} heads"
    for i, fam in enumerate(cfg.families):
        where = f"{cfg.source}: [[families]][{i}] ({fam.name})"
        try:
            if fam.receivers:
                check_receivers([str(r) for r in fam.receivers], fam.receiver_input, L, H)
            if fam.groups:
                check_groups(fam.groups, L, H)
        except ValueError as err:
            raise ValueError(f"{where}: {err} ({what})") from None
    ablation = cfg.background.to_ablation()
    if ablation is not None:
        try:
            ablation.check(L, H)
        except ValueError as err:
            raise ValueError(f"{cfg.source}: [background] {err} ({what})") from None
    if cfg.patching.readout:
        _check_readout(cfg, shape, what)


def _check_readout(cfg, shape: dict, what: str) -> None:
    """The readout's layer, head and direction size against the model's shape (what each readout can check
    without the model itself; see `jaxmech.patching.readouts.Readout.check_shape`)."""
    from jaxmech.patching.readouts import ReadoutError, parse_readout

    readout = parse_readout(cfg.patching.readout)
    try:
        readout.check_shape(shape["n_layers"], shape["n_heads"], shape["d_model"])
    except ReadoutError as err:
        raise ValueError(f"{cfg.source}: [patching] {err} ({what})") from None
