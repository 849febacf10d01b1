"""Runtime settings: precision names reach the lowered program, the persistent compilation cache serves a second
process, the device description, and transformers messages that do not apply to jaxmech are silenced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmech import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dot_lines(fn, *args) -> list[str]:
    text = jax.jit(fn).lower(*args).as_text()
    return [line for line in text.splitlines() if "dot_general" in line]


GPU_LOWERED = {
    "fp32": "precision = [HIGHEST, HIGHEST]",
    "tf32": "precision = [HIGH, HIGH]",
    "bf16": "lhs_precision_type = bf16, rhs_precision_type = bf16, accumulation_type = f32, lhs_component_count = 1",
    "bf16x3": "lhs_precision_type = bf16, rhs_precision_type = bf16, accumulation_type = f32, "
    "lhs_component_count = 1, rhs_component_count = 1, num_primitive_operations = 3",
}
LEVEL_LOWERED = {
    "highest": "[HIGHEST, HIGHEST]",
    "tensorfloat32": "[HIGH, HIGH]",
    "high": "[HIGH, HIGH]",
    "bfloat16": "[DEFAULT, DEFAULT]",
}


@pytest.mark.parametrize("name", list(runtime.PRECISIONS))
def test_precision_name_sets_the_lowered_dot_precision(name):
    a = jnp.ones((8, 8), jnp.float32)
    with runtime.precision(name) as checked:
        assert checked == name
        lines = _dot_lines(lambda x: x @ x, a)
    value = runtime.jax_precision(name)
    expected = GPU_LOWERED[name] if jax.default_backend() == "gpu" else LEVEL_LOWERED[value]
    assert lines and all(expected in line for line in lines), lines
    if name != "bf16" or jax.default_backend() == "gpu":  # on CPU, bf16 is JAX's DEFAULT level
        assert runtime.current_precision() != name  # outside the context, JAX's own default again
        assert not any(expected in line for line in _dot_lines(lambda x: x @ x, a))


@pytest.mark.parametrize("name", list(runtime.PRECISIONS))
def test_gpu_precision_values_lower_to_the_named_dot_algorithm(name):
    """What `precision` sets on a GPU (lowering does not need one)."""
    a = jnp.ones((8, 8), jnp.float32)
    with jax.default_matmul_precision(runtime.jax_precision(name, "gpu")):
        lines = _dot_lines(lambda x: x @ x, a)
    assert lines and all(GPU_LOWERED[name] in line for line in lines), lines
    assert runtime.jax_precision(name, "cpu") == runtime.PRECISION_LEVELS[name]


def test_current_precision_names_the_mode_inside_the_context():
    for name in runtime.PRECISIONS:
        with runtime.precision(name):
            got = runtime.current_precision()
        # on CPU/TPU, tf32 and bf16x3 share a level ("tensorfloat32" = "high" = HIGH); names stay distinct
        assert got == name or {got, name} <= {"tf32", "bf16x3"}


def test_default_precision_is_fp32_highest_in_a_real_model_forward(tiny_model):
    ids = jnp.asarray(np.arange(1, 9)[None] % 200)
    tt = jnp.zeros_like(ids)
    mask = jnp.ones_like(ids)
    with runtime.precision(None):  # None: the default
        lines = _dot_lines(lambda m: m(ids, tt, mask).score, tiny_model)
    assert len(lines) >= 6  # q, k, v, scores, pattern @ v, W_O, MLP in, MLP out, classifier, ...
    assert all("precision = [HIGHEST, HIGHEST]" in line for line in lines)


def test_every_mode_runs_a_model_forward_and_equals_fp32_on_cpu(tiny_model):
    """Each mode compiles for the model's batched products; on CPU, XLA computes them all in fp32."""
    ids = jnp.asarray(np.arange(1, 13).reshape(2, 6) % 200)
    tt, mask = jnp.zeros_like(ids), jnp.ones_like(ids)
    f = jax.jit(lambda m, ids: m(ids, tt, mask).score)
    scores = {}
    for name in runtime.PRECISIONS:
        with runtime.precision(name):
            scores[name] = np.asarray(f(tiny_model, ids))
    if jax.default_backend() == "cpu":
        for name, s in scores.items():
            np.testing.assert_array_equal(s, scores["fp32"], err_msg=name)


def test_with_precision_sets_checks_and_inherits():
    calls = []

    @runtime.with_precision
    def entry(x):
        """An entry point."""
        calls.append(runtime.current_precision())
        return _dot_lines(lambda a: a @ a, x)

    @runtime.with_precision
    def outer(x):
        return entry(x)  # no precision given: inherits the caller's

    a = jnp.ones((4, 4), jnp.float32)
    assert all("[HIGHEST, HIGHEST]" in line for line in entry(a))  # default fp32, not JAX's default
    assert all("[HIGHEST, HIGHEST]" in line for line in entry(a, precision="fp32"))
    level = runtime.jax_precision("tf32")
    expected = GPU_LOWERED["tf32"] if jax.default_backend() == "gpu" else LEVEL_LOWERED[level]
    assert all(expected in line for line in outer(a, precision="tf32"))
    assert calls == ["fp32", "fp32", "tf32"] and entry.__doc__.startswith("An entry point.")
    assert "Keyword ``precision``" in entry.__doc__
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        entry(a, precision="fp16")
    assert len(calls) == 3  # refused before the entry point ran


@pytest.mark.parametrize("bad", ["fp16", "highest", "", "FP32", 32])
def test_unknown_precision_is_refused_listing_the_valid_names(bad):
    with pytest.raises(ValueError) as err, runtime.precision(bad):
        pass
    msg = str(err.value)
    assert repr(bad) in msg and "valid: fp32, tf32, bf16x3, bf16" in msg
    with pytest.raises(ValueError, match=r"^--precision: unknown precision"):
        runtime.check_precision(bad, where="--precision")


def test_describe_device_names_the_device():
    d = runtime.describe_device()
    dev = jax.devices()[0]
    assert d["platform"] == dev.platform and d["device_kind"] == dev.device_kind
    assert d["device_count"] == jax.device_count() and d["jax"] == jax.__version__
    json.dumps(d)  # serialisable as it is, for benchmark and result JSON
    assert runtime.device_line(d).startswith(f"{dev.platform}:")


_CACHE_CHILD = textwrap.dedent(
    """
    import json, sys
    from jaxmech import runtime
    if sys.argv[1] == "jaxmech-first":
        runtime.enable_default_compilation_cache()  # turns the cache on without importing JAX
        assert "jax" not in sys.modules
    import jax
    hits = []
    jax.monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
    runtime.enable_default_compilation_cache()  # what the jaxmech command does (JAX already imported)
    import jax.numpy as jnp
    from jaxmech import runtime
    y = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0)(jnp.ones((5, 7)))
    print(json.dumps({"hits": len(hits), "status": runtime.compilation_cache_status(), "y": float(y)}))
    """
)


def _child(env_extra: dict, order: str = "jax-first") -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "JAXMECH_COMPILATION_CACHE": "1", **env_extra}
    for k in (
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
    ):
        env.pop(k, None)
    out = subprocess.run(
        [sys.executable, "-c", _CACHE_CHILD, order], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("order", ["jax-first", "jaxmech-first"])
def test_a_second_process_loads_programs_from_the_compilation_cache(tmp_path, order):
    env = {"JAXMECH_CACHE": str(tmp_path / "cache")}
    first = _child(env, order)
    assert first["status"] == {"enabled": True, "path": str(tmp_path / "cache" / "xla")}
    assert first["hits"] == 0
    assert list((tmp_path / "cache" / "xla").iterdir())  # a small program is cached too (thresholds at 0)
    second = _child(env, order)
    assert second["hits"] >= 1 and second["y"] == first["y"]


def test_the_compilation_cache_can_be_turned_off(tmp_path):
    off = _child({"JAXMECH_CACHE": str(tmp_path / "cache"), "JAXMECH_COMPILATION_CACHE": "0"})
    assert off["status"]["enabled"] is False and off["hits"] == 0
    assert not (tmp_path / "cache" / "xla").exists()


def test_enable_compilation_cache_in_process(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    try:
        folder = runtime.enable_compilation_cache(tmp_path / "xla")
        assert folder == tmp_path / "xla" and runtime.compilation_cache_status()["enabled"]
        jax.jit(lambda x: x * 7.25 + 1.5)(jnp.ones(3)).block_until_ready()
        assert list(folder.iterdir())
        assert runtime.enable_compilation_cache(enabled=False) is None
        assert not runtime.compilation_cache_status()["enabled"]
        with pytest.raises(OSError, match="compilation cache folder .* cannot be created"):
            (tmp_path / "file").write_text("x")
            runtime.enable_compilation_cache(tmp_path / "file" / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_enable_compilation_cache", before[1])
        runtime._reset_jax_cache()


def test_import_jaxmech_sets_nothing_and_creates_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(PYTHONPATH=REPO, HOME=str(tmp_path / "home"), JAXMECH_CACHE=str(tmp_path / "cache"))
    env.pop("JAXMECH_COMPILATION_CACHE", None)
    code = "import os, jaxmech, jaxmech.results, jaxmech.sweeps; print(sorted(k for k in os.environ if 'JAX' in k))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['JAXMECH_CACHE']"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "home").exists()


_QUIET_CHILD = textwrap.dedent(
    """
    import importlib.util, sys
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a, **k: None if name == "torch" else real(name, *a, **k)  # no torch
    if sys.argv[1] == "jaxmech":
        import jaxmech
    import transformers
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(sys.argv[2])
    tok("word " * 600)["input_ids"]  # longer than the tokenizer's 512
    print("done")
    """
)


@pytest.mark.parametrize("first", ["jaxmech", "transformers"])
def test_transformers_messages_that_do_not_apply_are_silenced(minilm_path, first):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    env.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
    out = subprocess.run(
        [sys.executable, "-c", _QUIET_CHILD, first, str(minilm_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
    seen = ("PyTorch was not found" in out.stderr, "Token indices sequence length is longer" in out.stderr)
    # without jaxmech, transformers prints both (the check can fail); with jaxmech imported first, neither
    assert seen == ((False, False) if first == "jaxmech" else (True, True)), out.stderr
