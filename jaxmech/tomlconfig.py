"""The one TOML reader of jaxmech's configs (training and sweeps): reading a file, parsing a table into a frozen
dataclass strictly, and the ``[run]`` identity every config shares.

A config is a set of tables, each read into a frozen dataclass by `parse_section`: an unknown key, a value of
the wrong type or one a section's ``__post_init__`` refuses is a `ConfigError` naming the file, the table and
the key (``configs/demo.toml: [[families]][2]: name='x' is not a patching family; ...``), raised before
anything is computed. `jaxmech.train.config` and `jaxmech.sweeps.config` build their configs from these parts.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "RunIdentity", "check_choice", "parse_section", "read_toml"]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""

    def __init__(self, source: str | os.PathLike, key: str | None, problem: str):
        self.source, self.key, self.problem = str(source), key, problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def check_choice(where: str, name: str, value: Any, choices: tuple) -> None:
    """Refuses a config value that is not one of ``choices``, naming where it is (``"[data]"``) and the key.

    Raises:
        ValueError: ``[data] source='x'; choose one of [...]``.
    """
    if value not in choices:
        raise ValueError(f"{where} {name}={value!r}; choose one of {list(choices)}".strip())


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """``[run]`` of every jaxmech config (training and sweeps): a required name and an output folder.

    Attributes:
        name: Run name (default output folder ``runs/<name>``).
        out_dir: Output folder; default ``runs/<name>``.
    """

    name: str = ""
    out_dir: str = ""

    def __post_init__(self):
        if not self.name:
            raise ValueError("[run] name is required")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return "none" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def parse_section(name: str, cls: type, table: Any, source: str) -> Any:
    """One TOML table as the frozen dataclass ``cls``, rejecting unknown keys (shared by the training and the
    sweep configs).

    Args:
        name: The table's name in messages (``"model"``, ``"[families]][2"``).
        cls: The section's dataclass.
        table: The parsed TOML table.
        source: The config file, for messages.

    Raises:
        ConfigError: Naming the file, the table and the unknown key or bad value.
    """
    if not isinstance(table, dict):
        raise ConfigError(source, f"[{name}]", "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(source, f"[{name}] {key}", f"unknown key (known: {', '.join(sorted(fields))})")
        if not _type_ok(value, hints[key]):
            raise ConfigError(
                source,
                f"[{name}] {key}",
                f"expected {_type_name(hints[key])}, got {type(value).__name__} {value!r}",
            )
    kw = {k: float(v) if hints[k] is float else v for k, v in table.items()}
    try:
        return cls(**kw)
    except ValueError as err:
        raise ConfigError(source, f"[{name}]", str(err)) from None


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a TOML config file (any jaxmech config).

    Raises:
        ConfigError: If the file is missing or unreadable, or is not valid TOML (naming the file).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "config file not found") from None
    except OSError as err:
        raise ConfigError(path, None, f"cannot read config file: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, None, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, None, f"invalid TOML: {err}") from None
