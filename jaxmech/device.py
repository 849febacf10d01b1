"""What a measurement ran on: kept for existing imports; the implementation is `jaxmech.runtime`."""

from __future__ import annotations

from jaxmech.runtime import cpu_name, describe_device, device_line

__all__ = ["cpu_name", "describe_device", "device_line"]
