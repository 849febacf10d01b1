"""The packaged cross-encoder (``packaged-ce``) and the packaged word IDF table (``wordfreq``).

``packaged-ce`` is the shared fp32 model ``../shared/models/minilm6-ce-distilled`` with every weight rounded to
fp16 for storage and loaded back as fp32. Its logits are therefore *not* the fp32 model's within the parity
tolerance (atol 1e-4 is the claim "same weights, another implementation"); they are the logits of slightly
different weights. The claim tested here is that they differ by no more than fp16 storage rounding explains.
Rounding moves each weight by ``delta_i`` with ``|delta_i| <= u |w_i|`` (``u = 2**-11``, fp16's unit
roundoff; subnormal fp16 values by at most ``2**-25``), so to first order the logit moves by
``sum_i g_i delta_i`` (``g`` the fp32 model's gradient at the pair). The worst case (every error aligned with
the gradient, ``sum |g_i| u |w_i|``) is 0.5-0.8 on this model, a thousand times what rounding does, and no
test. Treating the rounding errors as independent and mean-zero (Higham & Mary's probabilistic rounding
model), Hoeffding gives ``P(|sum g_i delta_i| > lam * s) <= 2 exp(-lam**2 / 2)`` with
``s = sqrt(sum (g_i u |w_i|)**2)``; with ``lam = 6`` (2e-8) the tolerance is ``6 s``, computed per pair from the
fp32 model's own gradient, not chosen. A planted model whose weights moved by 5 % instead must exceed it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

SHARED_CE = Path(__file__).resolve().parents[2] / "shared" / "models" / "minilm6-ce-distilled"
QUERY = "how do tides form"
DOCS = ["Tides are caused by the gravitational pull of the moon and the sun on the oceans.",
        "Cats sleep for most of the day."]
U16 = 2.0**-11  # fp16 unit roundoff (round to nearest)
SUB16 = 2.0**-25  # half the spacing of fp16 subnormals
LAM = 6.0  # Hoeffding: P(exceeding) <= 2 exp(-18) = 3e-8 per pair


@pytest.fixture(scope="module")
def packaged_ce():
    from jaxmech.hf.loading import load_model

    return load_model("packaged-ce", use_cache=False)


@pytest.fixture(scope="module")
def shared_ce():
    if not (SHARED_CE / "model.safetensors").is_file():
        pytest.skip(f"the shared fp32 cross-encoder is not at {SHARED_CE}")
    from jaxmech.hf.loading import load_model

    return load_model(SHARED_CE, use_cache=False)


def _scores(lm) -> np.ndarray:
    enc = lm.tokenizer.encode_pairs([QUERY] * len(DOCS), DOCS)
    return np.asarray(lm.model(*map(jnp.asarray, enc.arrays)).score, np.float64)


def test_packaged_ce_resolves_and_loads_as_a_cross_encoder(packaged_ce):
    from jaxmech.files import packaged_ce_path, resolve_model_path

    assert Path(resolve_model_path("packaged-ce")) == packaged_ce_path() == packaged_ce.folder
    assert packaged_ce.kind == "cross"
    assert packaged_ce.report.initialized == []  # every parameter read from the file, none seeded
    s = _scores(packaged_ce)
    assert s[0] > s[1]  # a relevance model: the tides passage above the cats one


def test_packaged_ce_parameters_round_trip(packaged_ce, tmp_path):
    """Loaded as fp32, every parameter is exactly an fp16 value (storage lost nothing beyond the rounding),
    and saving and reloading gives the same parameters bit for bit."""
    from jaxmech.hf.loading import flat_params, load_model, save_pretrained

    flat = flat_params(packaged_ce.model)
    for name, p in flat.items():
        p = np.asarray(p)
        assert p.dtype == np.float32, name
        np.testing.assert_array_equal(p.astype(np.float16).astype(np.float32), p, err_msg=name)
    save_pretrained(packaged_ce.model, tmp_path / "rt", tokenizer=packaged_ce.tokenizer)
    again = flat_params(load_model(tmp_path / "rt", use_cache=False).model)
    assert sorted(again) == sorted(flat)
    for name in flat:
        np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(flat[name]), err_msg=name)


def test_packaged_ce_is_the_shared_model_rounded_to_fp16(packaged_ce, shared_ce):
    from jaxmech.hf.loading import flat_params

    ours, ref = flat_params(packaged_ce.model), flat_params(shared_ce.model)
    assert sorted(ours) == sorted(ref)
    for name in ref:
        r = np.asarray(ref[name])
        np.testing.assert_array_equal(np.asarray(ours[name]), r.astype(np.float16).astype(np.float32), err_msg=name)


@pytest.fixture(scope="module")
def fp16_storage_tolerance(shared_ce) -> np.ndarray:
    """Per pair, ``LAM * sqrt(sum_i (g_i * max(u |w_i|, 2**-25))**2)`` (module docstring)."""
    from flax import nnx

    enc = shared_ce.tokenizer.encode_pairs([QUERY] * len(DOCS), DOCS)
    ids, tt, mask = map(jnp.asarray, enc.arrays)
    graphdef, params, rest = nnx.split(shared_ce.model, nnx.Param, ...)
    out = []
    for i in range(len(DOCS)):
        def score(p, i=i):
            return nnx.merge(graphdef, p, rest)(ids[i:i + 1], tt[i:i + 1], mask[i:i + 1]).score[0]

        grads = jax.grad(score)(params)
        sq = jax.tree.map(lambda g, w: jnp.sum((g * jnp.maximum(U16 * jnp.abs(w), SUB16)) ** 2), grads, params)
        out.append(LAM * float(np.sqrt(sum(float(x) for x in jax.tree.leaves(sq)))))
    return np.array(out)


def test_packaged_ce_logits_within_fp16_storage_rounding(packaged_ce, shared_ce, fp16_storage_tolerance):
    diff = np.abs(_scores(packaged_ce) - _scores(shared_ce))
    assert (diff <= fp16_storage_tolerance).all(), f"|logit diff| {diff} > tolerance {fp16_storage_tolerance}"
    assert (diff > 0).any()  # the weights did change: a tolerance met by identical weights would test nothing


def test_fp16_storage_tolerance_rejects_another_model(shared_ce, fp16_storage_tolerance):
    """Not vacuous: weights moved by 5 % (random, seeded), not by fp16 rounding, leave the tolerance."""
    from jaxmech.hf.loading import flat_params, load_flat_params

    flat = flat_params(shared_ce.model)
    rng = np.random.default_rng(0)
    moved = {k: (v * (1 + 0.05 * rng.standard_normal(v.shape))).astype(np.float32) for k, v in flat.items()}
    other = type(shared_ce)(load_flat_params(shared_ce.model, moved), shared_ce.tokenizer, shared_ce.folder,
                            shared_ce.kind, shared_ce.report)
    assert (np.abs(_scores(other) - _scores(shared_ce)) > fp16_storage_tolerance).all()


def test_wordfreq_idf_table_is_packaged_and_ordered():
    from jaxmech.data.idf import WORDFREQ, load_idf_tsv, packaged_idf_path

    assert packaged_idf_path().is_file()
    table = load_idf_tsv(WORDFREQ)
    assert len(table) > 50_000
    assert all(w.isalpha() and w == w.lower() for w in table)
    # frequent words get low IDF, rare ones high: the order wordfreq's frequencies give
    assert table["the"] < table["said"] < table["tortoise"]
    assert min(table.values()) >= 0


def test_idf_svd_step_takes_wordfreq_source(packaged_ce):
    from jaxmech.analysis.options import IdfSvdOptions
    from jaxmech.analysis.steps import idf_svd_step

    out = idf_svd_step(packaged_ce, IdfSvdOptions(source="wordfreq", n_components=4))
    assert out["idf_source"] == "table wordfreq"
    assert out["n_nonzero_idf"] > 1000  # whole-word vocabulary entries found in the table
    assert -1 <= out["u0_idf_pearson"] <= 0  # oriented by the sign convention


def _script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fp32_folder(folder: Path, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text("{}")
    return folder


def test_make_packaged_ce_is_reproducible_fp16_rounding(tmp_path):
    from safetensors.numpy import load_file

    make = _script("make_packaged_ce").make
    rng = np.random.default_rng(0)
    w = {"b.weight": rng.standard_normal((7, 5)).astype(np.float32), "a.bias": np.float32([1e-7, -3.3, 0.1])}
    src = _fp32_folder(tmp_path / "src", w)
    first, second = make(src, tmp_path / "one"), make(src, tmp_path / "two")
    assert first == second  # byte-identical folders (sha256 of every file)
    stored = load_file(str(tmp_path / "one" / "model.safetensors"))
    for k, v in w.items():
        assert stored[k].dtype == np.float16
        np.testing.assert_array_equal(stored[k], v.astype(np.float16))


def test_make_packaged_ce_refuses_what_fp16_cannot_hold(tmp_path):
    make = _script("make_packaged_ce").make
    src = _fp32_folder(tmp_path / "src", {"w": np.float32([1.0, 7e4])})
    with pytest.raises(ValueError, match="w overflows fp16"):
        make(src, tmp_path / "out")


def test_packaged_names_resolve_everywhere_a_model_is_named(tmp_path):
    from jaxmech.files import packaged_ce_path, resolve_model_path
    from jaxmech.report.demo import resolve_model

    assert resolve_model("packaged-ce", tmp_path) == "packaged-ce"  # the report's demo-pair scoring
    assert resolve_model_path("packaged-ce/") == "packaged-ce/"  # only the exact name; a folder path is a folder
    assert (packaged_ce_path() / "SOURCE.txt").is_file()
