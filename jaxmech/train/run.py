"""A training config run end to end: what ``jaxmech train CONFIG`` and ``jaxmech train eval CONFIG`` do.

The config is read before the trainer (and so JAX) is imported, so a bad config is reported at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxmech.train.config import load_config


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_from_config(
    config: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    log: Callable[[str], None] = _log_stderr,
) -> dict[str, Any]:
    """Trains as the TOML config says (`jaxmech.train.trainer.Trainer.fit`).

    Args:
        config: The TOML training config (`jaxmech.train.config`).
        out: Run folder (default: ``[run] out_dir`` or ``runs/<name>``).
        resume: Continue from the newest checkpoint in the run folder.
        log: Where progress lines go (default: stderr).

    Returns:
        ``{"step", "out_dir", "eval_before", "eval_after"}``: the last step, the run folder and the held-out
        metrics before and after training (None where not evaluated in this session).

    Raises:
        ConfigError: For a bad config (naming the file and key), before JAX is imported.
        ResumeError: If the run folder holds checkpoints and ``resume`` is False, or another config wrote them.
        ValueError, FileNotFoundError: For bad training data or a missing model (naming the file).
    """
    cfg = load_config(config)  # imports no JAX
    from jaxmech.train.trainer import Trainer

    trainer = Trainer(cfg, out_dir=out, log=log)
    result = trainer.fit(resume=resume)
    return {
        "step": result.step,
        "out_dir": str(trainer.out_dir),
        "eval_before": result.eval_before,
        "eval_after": result.eval_after,
    }


def evaluate_from_config(
    config: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    log: Callable[[str], None] = _log_stderr,
) -> dict[str, Any]:
    """Held-out metrics of a cross-encoder folder on the config's split, labels and reference (as in training).

    Args:
        config: The TOML training config.
        out: Run folder (default: ``[run] out_dir`` or ``runs/<name>``).
        model: The model folder (default: ``<run folder>/export``).
        log: Where progress lines go (default: stderr).

    Returns:
        The metrics of `jaxmech.train.trainer.Trainer.evaluate`.

    Raises:
        ConfigError: For a bad config, before JAX is imported.
        FileNotFoundError: If the model folder does not exist.
    """
    cfg = load_config(config)  # imports no JAX
    from jaxmech.hf.loading import load_model
    from jaxmech.train.trainer import Trainer

    trainer = Trainer(cfg, out_dir=out, log=log)
    folder = Path(model) if model else trainer.out_dir / "export"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder (train first, or pass --model)")
    return trainer.evaluate(load_model(folder, kind="cross").model)
