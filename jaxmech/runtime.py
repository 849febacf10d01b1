"""Runtime settings: matmul precision, JAX's persistent compilation cache, what a run ran on, and the memory free
on it (`available_memory`, for chunk sizes from compiled programs' memory).

Precision is an explicit setting with four names, each mapped to a value of JAX's
``jax_default_matmul_precision`` (`jax_precision`):

* ``"fp32"`` (the default): JAX ``"highest"``, full fp32 matmuls on every device. On GPUs JAX's own default
  runs fp32 matmuls in TF32, which is too coarse for patching effects of ~1e-3; jaxmech never uses it
  silently.
* ``"tf32"``: JAX ``"tensorfloat32"`` (TF32 tensor cores on NVIDIA GPUs).
* ``"bf16x3"``: on GPUs the ``BF16_BF16_F32_X3`` dot algorithm (three bf16 products, close to fp32); on TPUs
  the ``"high"`` level (the same three passes).
* ``"bf16"``: on GPUs the ``BF16_BF16_F32`` dot algorithm (bf16 inputs, fp32 accumulation); on TPUs the
  ``"bfloat16"`` level (one pass).

On CPU, XLA computes every mode in fp32 (and has no bf16 dot algorithms for batched products, so the
levels are used there): the fast modes equal ``"fp32"`` on CPU.

The setting is part of JAX's trace context and jit cache key, so ``with precision("tf32"): f(x)`` retraces
``f`` with TF32 matmuls and the fp32 program stays cached beside it.

The persistent compilation cache (`enable_compilation_cache`) stores compiled XLA programs under
``$JAXMECH_CACHE/xla`` (default ``~/.cache/jaxmech/xla``) so that a second process running the same
program loads it instead of compiling. The ``jaxmech`` command and sweeps turn it on
(`enable_default_compilation_cache`) unless ``JAXMECH_COMPILATION_CACHE=0`` is set or the user has
configured JAX's own cache directory; ``import jaxmech`` does not.

This module imports neither torch nor (at import time) JAX, so ``import jaxmech`` stays light.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

Precision = Literal["fp32", "tf32", "bf16x3", "bf16"]

#: jaxmech precision name -> value of ``jax_default_matmul_precision`` on GPUs.
PRECISIONS: dict[str, str] = {
    "fp32": "highest",
    "tf32": "tensorfloat32",
    "bf16x3": "BF16_BF16_F32_X3",
    "bf16": "BF16_BF16_F32",
}
#: The same on platforms without dot algorithms for every product (CPU, TPU): precision levels.
PRECISION_LEVELS: dict[str, str] = {
    "fp32": "highest",
    "tf32": "tensorfloat32",
    "bf16x3": "high",
    "bf16": "bfloat16",
}
DEFAULT_PRECISION: Precision = "fp32"

_OFF = ("0", "off", "false", "no")


# --------------------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------------------


def check_precision(name: str | None, *, where: str = "precision") -> Precision:
    """Validates a precision name (None means the default, ``"fp32"``).

    Args:
        name: One of `PRECISIONS`, or None.
        where: What the value was given as, for the error message (e.g. ``"--precision"``).

    Returns:
        The name.

    Raises:
        ValueError: Naming the bad value and listing the valid ones.
    """
    if name is None:
        return DEFAULT_PRECISION
    if not isinstance(name, str) or name not in PRECISIONS:
        raise ValueError(f"{where}: unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    return name  # type: ignore[return-value]


def jax_precision(name: str | None, platform: str | None = None) -> str:
    """The ``jax_default_matmul_precision`` value of a jaxmech precision name (validated) on ``platform``
    (``"gpu"``, ``"cpu"``, ``"tpu"``; default: JAX's default backend)."""
    import jax

    checked = check_precision(name)
    platform = platform or jax.default_backend()
    return (PRECISIONS if platform in ("gpu", "cuda", "rocm") else PRECISION_LEVELS)[checked]


def resolve_precision(name: str | None) -> Precision:
    """A precision name, or for None the one in effect: an enclosing `precision` context's (or a jaxmech
    name set through JAX's own configuration), else the default ``"fp32"`` (never JAX's unset default,
    which is TF32 on GPUs).

    Raises:
        ValueError: For an unknown name.
    """
    if name is not None:
        return check_precision(name)
    current = current_precision()
    return current if current in PRECISIONS else DEFAULT_PRECISION  # type: ignore[return-value]


@contextlib.contextmanager
def precision(name: str | None = DEFAULT_PRECISION) -> Iterator[Precision]:
    """Runs the enclosed JAX code (tracing and compilation) with this matmul precision.

    Args:
        name: A name from `PRECISIONS` (None: the one in effect, see `resolve_precision`).

    Yields:
        The validated name.

    Raises:
        ValueError: For an unknown name, before anything runs.

    Example:
        >>> with precision("tf32"):
        ...     res = activation_patch(model, batch, "head_by_pos_z")
    """
    import jax

    checked = resolve_precision(name)
    with jax.default_matmul_precision(jax_precision(checked)):
        yield checked


def with_precision(fn: Callable) -> Callable:
    """Gives a JAX entry point a ``precision`` keyword: a name from `PRECISIONS`, or None (the default) for
    the one in effect (`resolve_precision`: an enclosing call's, else ``"fp32"``). The name is checked before
    anything runs, and the call is traced and compiled with that matmul precision."""
    _context = precision

    @functools.wraps(fn)
    def wrapper(*args, precision: str | None = None, **kwargs):
        with _context(precision):
            return fn(*args, **kwargs)

    if wrapper.__doc__ and "precision:" not in wrapper.__doc__:
        wrapper.__doc__ = (wrapper.__doc__.rstrip() + "\n\n    Keyword ``precision``: a name of "
                           "`jaxmech.runtime.PRECISIONS` (default ``\"fp32\"``, or an enclosing call's; see "
                           "`jaxmech.runtime.with_precision`).\n")
    return wrapper


def current_precision() -> str:
    """The jaxmech name of JAX's current default matmul precision, or JAX's raw value if it is not one
    of `PRECISIONS` (``"default"`` when unset: TF32 on NVIDIA GPUs, fp32 on CPU)."""
    import jax

    value = jax.config.jax_default_matmul_precision
    if value in (None, "default"):
        return "default"
    by_value = {v: k for k, v in (*PRECISION_LEVELS.items(), *PRECISIONS.items())}
    by_value["float32"] = "fp32"
    return by_value.get(value, value)


# --------------------------------------------------------------------------------------------------------------
# Cache folder and persistent compilation cache
# --------------------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """jaxmech's cache folder: ``$JAXMECH_CACHE``, default ``~/.cache/jaxmech``."""
    return Path(os.environ.get("JAXMECH_CACHE", Path.home() / ".cache" / "jaxmech")).expanduser()


def compilation_cache_dir() -> Path:
    """Where jaxmech keeps compiled XLA programs: ``cache_root() / "xla"``."""
    return cache_root() / "xla"


def _reset_jax_cache() -> None:
    """Makes JAX re-read its cache settings at the next compilation (it initialises its cache once)."""
    with contextlib.suppress(Exception):  # private API; without it the settings apply to new processes only
        from jax._src import compilation_cache

        compilation_cache.reset_cache()


def enable_compilation_cache(path: str | Path | None = None, enabled: bool = True) -> Path | None:
    """Turns JAX's persistent compilation cache on (or off) for this process.

    Every compiled program is cached, however small or fast to compile (minimum compile time 0 s, no
    minimum entry size), so a rerun of a sweep in a new process loads its programs instead of compiling
    them. JAX keys entries by the program, the device, the JAX version and the compile options (including
    the matmul precision), so a stale entry is never used.

    Args:
        path: Cache folder (default: `compilation_cache_dir`, i.e. ``$JAXMECH_CACHE/xla``).
        enabled: False turns the cache off.

    Returns:
        The cache folder, or None when turned off.

    Raises:
        OSError: If ``path`` cannot be created (naming it).
    """
    import jax

    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        _reset_jax_cache()
        return None
    folder = Path(path).expanduser() if path is not None else compilation_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"compilation cache folder {folder} cannot be created: {err}") from None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _reset_jax_cache()
    return folder


def compilation_cache_status() -> dict:
    """Whether the persistent compilation cache is on, and where (for run metadata)."""
    import jax

    on = bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)
    return {"enabled": on, "path": jax.config.jax_compilation_cache_dir if on else None}


def enable_default_compilation_cache() -> Path | None:
    """What the ``jaxmech`` command does first (``import jaxmech`` does not): the cache under
    `compilation_cache_dir`, unless
    ``JAXMECH_COMPILATION_CACHE`` is ``0``/``off`` or JAX's cache folder is already configured (then the
    user's setting stands). It does not import JAX: if JAX is not imported yet, it sets the environment
    variables JAX reads when it is (``JAX_COMPILATION_CACHE_DIR`` and the two thresholds, which child
    processes inherit). An unwritable folder leaves the cache off (it only costs compile time)."""
    if os.environ.get("JAXMECH_COMPILATION_CACHE", "1").strip().lower() in _OFF:
        return None
    if "jax" in sys.modules:
        import jax

        if jax.config.jax_compilation_cache_dir:
            return Path(jax.config.jax_compilation_cache_dir)
        try:
            return enable_compilation_cache()
        except OSError:
            return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    folder = compilation_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    return folder


# --------------------------------------------------------------------------------------------------------------
# transformers messages that do not apply to jaxmech
# --------------------------------------------------------------------------------------------------------------

#: (logger, message prefix) of transformers messages that are wrong or moot for jaxmech: jaxmech runs its models
#: in JAX (PyTorch is not needed), and it truncates pairs to the model's length itself and reports every cut.
QUIETED_MESSAGES = (
    ("transformers", "PyTorch was not found"),
    ("transformers.tokenization_utils_base", "Token indices sequence length is longer"),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_transformers() -> None:
    """Drops the `QUIETED_MESSAGES` of ``transformers`` (other transformers messages pass). Idempotent; takes
    effect for messages logged after the call (``import jaxmech`` calls it before importing transformers)."""
    for name, prefix in QUIETED_MESSAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))


# --------------------------------------------------------------------------------------------------------------
# Device description
# --------------------------------------------------------------------------------------------------------------


def available_memory() -> tuple[int, str]:
    """Bytes free on the first local device and what they are (``"device"`` or ``"system"``): the device's
    ``bytes_limit - bytes_in_use`` where it reports them (GPU, TPU), else the system's available memory."""
    import jax

    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"{dev.device_kind} memory"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, "available system memory"
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free system memory"


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device() -> dict:
    """What a run ran on, for summaries, result metadata and benchmark JSON.

    Returns:
        ``platform`` (``cpu``, ``gpu``, ``tpu``), ``device_kind`` (e.g. ``NVIDIA H200``), ``device_count``,
        ``memory_bytes`` (device memory limit where JAX reports it, else None), ``cpu``, ``cpu_count``,
        ``jax`` and ``jaxlib`` versions, ``python``, and ``matmul_precision`` (see `current_precision`).
    """
    import jax
    import jaxlib

    dev = jax.devices()[0]
    stats = None
    with contextlib.suppress(Exception):
        stats = dev.memory_stats()
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "memory_bytes": (stats or {}).get("bytes_limit"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", None),
        "python": platform.python_version(),
        "matmul_precision": current_precision(),
    }


def device_line(info: dict | None = None) -> str:
    """One line naming the device, for printed summaries (e.g. ``cpu: AMD EPYC ... (2 cores), jax 0.10.2``)."""
    d = info or describe_device()
    if d["platform"] == "cpu":
        what = f"cpu: {d['cpu']} ({d['cpu_count']} cores)"
    else:
        what = f"{d['platform']}: {d['device_count']} x {d['device_kind']}"
    return f"{what}, jax {d['jax']}"
