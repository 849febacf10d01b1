"""Heads named on the command line and in configs, parsed once: receiver heads of path families and head groups.

``"4.1"`` (or ``(4, 1)``) is head 1 of layer 4. `check_receivers` and `check_groups` parse and check, and
accept their own output, so a caller may parse once (`jaxmech.patching.run.check_request`) and hand the parsed
tuples down; the kernels group receivers by layer with `receivers_by_layer`. This module imports nothing of
jaxmech (no JAX), so configs and the CLI use it before anything heavy is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

RECEIVER_INPUTS = ("q", "k", "v")
"""Which input of the receiver heads path families patch."""

Head = tuple[int, int]
"""``(layer, head)``."""
ReceiversByLayer = tuple[tuple[int, tuple[int, ...]], ...]
"""``((layer, (head, ...)), ...)`` sorted by layer (`receivers_by_layer`)."""


def parse_heads(heads: Sequence[str | tuple[int, int]]) -> tuple[Head, ...]:
    """``["10.1", (9, 4)]`` to ``((10, 1), (9, 4))``.

    Raises:
        ValueError: On a malformed head name.
    """
    out = []
    for h in heads:
        if isinstance(h, str):
            parts = h.split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"head {h!r} is not LAYER.HEAD (e.g. 4.1)")
            h = (int(parts[0]), int(parts[1]))
        out.append((int(h[0]), int(h[1])))
    return tuple(out)


def head_names(heads: Sequence[Head]) -> list[str]:
    """``((10, 1),)`` to ``["10.1"]``."""
    return [f"{layer}.{head}" for layer, head in heads]


def check_receivers(receivers, receiver_input: str, n_layers: int | None = None,
                    n_heads: int | None = None) -> tuple[Head, ...]:
    """Parses and checks receiver heads (against the model's shape when ``n_layers``/``n_heads`` are given).

    Args:
        receivers: ``["4.1", (3, 2)]`` (or this function's output).
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        n_layers: Layers of the model.
        n_heads: Heads per layer.

    Returns:
        ``((layer, head), ...)``.

    Raises:
        ValueError: On a malformed head, an unknown receiver input, no receivers, or a head out of range
            (receivers need a layer above 0: their senders sit below them).
    """
    receivers = parse_heads(receivers or ())
    if receiver_input not in RECEIVER_INPUTS:
        raise ValueError(f"receiver input {receiver_input!r}; choose one of {RECEIVER_INPUTS}")
    if not receivers:
        raise ValueError("no receiver heads given")
    for layer, head in receivers:
        if n_layers is not None and n_heads is not None and not (0 < layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"receiver head {layer}.{head} is out of range (layers 1..{n_layers - 1}, heads "
                             f"0..{n_heads - 1})")
    return receivers


def receivers_by_layer(receivers: Sequence[Head]) -> ReceiversByLayer:
    """``((layer, (head, ...)), ...)`` sorted by layer."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in receivers:
        by_layer.setdefault(layer, []).append(head)
    return tuple((r, tuple(h)) for r, h in sorted(by_layer.items()))


def check_groups(groups, n_layers: int | None = None, n_heads: int | None = None
                 ) -> tuple[tuple[Head, ...], ...]:
    """Parses and checks head groups (against the model's shape when given).

    Args:
        groups: ``[["9.1", "9.2"], ["10.1"]]`` (a group may also be one ``"9.1,9.2"`` string; or this
            function's output).
        n_layers: Layers of the model.
        n_heads: Heads per layer.

    Returns:
        ``(((layer, head), ...), ...)``, one tuple per group.

    Raises:
        ValueError: On no groups, an empty group, a malformed head, a head twice in a group, or one out of range.
    """
    out = []
    for i, group in enumerate(groups or ()):
        items = group.split(",") if isinstance(group, str) else list(group)
        heads = parse_heads([h.strip() if isinstance(h, str) else h for h in items if not isinstance(h, str)
                             or h.strip()])
        if not heads:
            raise ValueError(f"head group {i} is empty")
        if len(set(heads)) != len(heads):
            raise ValueError(f"head group {i} lists a head twice: {group}")
        for layer, head in heads:
            if n_layers is not None and n_heads is not None and not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(f"head {layer}.{head} of group {i} is out of range (layers 0..{n_layers - 1}, "
                                 f"heads 0..{n_heads - 1})")
        out.append(heads)
    if not out:
        raise ValueError("no head groups given (e.g. groups [['9.1', '9.2'], ['10.1']] or --group 9.1,9.2)")
    return tuple(out)
