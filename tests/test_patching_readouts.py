"""Readouts beyond the score: each readout against its definition on the full forward (a loop of single
patches with the readout's site captured), the unpatched/fully-patched invariants, the score bit for bit,
path families, refusals and the spec syntax."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, TINY_ODD, hf_checkpoint, random_pairs, save_tiny_cross, tiny_lm

from jaxmech.patching import (
    PatchSpec,
    activation_patch,
    batch_pairs,
    get_family,
    one_hot,
    parse_heads,
    path_to_heads,
    path_to_score,
)
from jaxmech.patching.caches import run_cached
from jaxmech.patching.readouts import (
    SCORE,
    AttentionWeight,
    LogitMargin,
    Projection,
    ReadoutError,
    bind,
    parse_readout,
)


def _typed(pairs):
    """Random pairs with token types: CLS, the first query token Qplus, other query tokens Qsub, SEP1, the
    document Dother, the injected slots Dinj, SEP2."""
    out = []
    for p in pairs:
        n_q = p.baseline_token_type_ids.index(1) - 2
        n = len(p.baseline_ids)
        n_inj = sum(1 for a, b in zip(p.baseline_ids, p.perturbed_ids, strict=True) if a != b)
        types = ["CLS", "Qplus"] + ["Qsub"] * (n_q - 1) + ["SEP1"] + ["Dother"] * (n - n_q - 3 - n_inj) + \
            ["Dinj"] * n_inj + ["SEP2"]
        out.append(dataclasses.replace(p, token_types=types))
    return out


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return _typed(random_pairs(2, tiny_model.cfg.d_vocab, seed=1))


@pytest.fixture(scope="module")
def batch(pairs):
    return batch_pairs(pairs, buckets=(24, 32), max_length=48)


def _weights(pair, selector, reduce, T):
    """The test's own reading of a selector (independent of `bind`)."""
    if isinstance(selector, int):
        m = np.arange(T) == selector
    else:
        names = {"Q": ["Qplus", "Qsub"], "D": ["Dinj", "Dplus", "Dsub", "Dother"]}.get(selector, selector.split("|"))
        m = np.array([t in names for t in pair.token_types] + [False] * (T - len(pair.token_types)))
    return m / m.sum() if reduce == "mean" else m.astype(float)


@functools.partial(jax.jit, static_argnames=("capture",))
def _forward(model, ids, tt, mask, interventions, capture=frozenset()):
    out = model.forward_one(ids, tt, mask, interventions=interventions, capture=capture)
    return out.logits, out.cache


def _value(model, readout, pair, T, inputs, interventions):
    """The readout of one full forward with ``interventions``, from its captured site."""
    if isinstance(readout, LogitMargin):
        logits, _ = _forward(model, *inputs, interventions)
        return float(logits[readout.i] - logits[readout.j])
    _, cache = _forward(model, *inputs, interventions, frozenset({readout.site}))
    act = np.asarray(cache[readout.site][readout.layer], np.float64)
    if isinstance(readout, AttentionWeight):
        return float(_weights(pair, readout.from_, readout.from_reduce, T) @ act[readout.head]
                     @ _weights(pair, readout.to, readout.to_reduce, T))
    return float(_weights(pair, readout.position, readout.reduce, T) @ act @ np.asarray(readout.direction))


def _inputs(batch, p, which="baseline"):
    return [jnp.asarray(a[p]) for a in getattr(batch, which)]


def _loop(model, batch, pairs, family, readout, stride=1):
    """Each patch of an activation family as its own full forward; ``[pair, comp, layer, pos, head]`` (every
    ``stride``-th patchable position)."""
    fam = get_family(family)
    cfg = model.cfg
    _, src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset(fam.sites))
    out = np.full((batch.n_pairs, len(fam.sites), cfg.n_layers, batch.n_pos, cfg.n_heads), np.nan)
    for p in range(batch.n_pairs):
        for c, site in enumerate(fam.sites):
            for layer in range(cfg.n_layers):
                for pos in (np.nonzero(batch.patchable[p])[0][::stride] if fam.per_pos else [None]):
                    for h in (range(cfg.n_heads) if fam.per_head else [None]):
                        pm = (one_hot(pos, batch.n_pos) if pos is not None
                              else jnp.asarray(batch.patchable[p], jnp.float32))
                        hm = one_hot(h, cfg.n_heads) if h is not None else None
                        spec = PatchSpec(site, src[site][p], one_hot(layer, cfg.n_layers), pm, hm)
                        out[p, c, layer, pos or 0, h or 0] = _value(model, readout, pairs[p], batch.n_pos,
                                                                    _inputs(batch, p), [spec])
    return out


def _canonical(result, family, cfg, n_pos):
    fam = get_family(family)
    x = result.patched if len(fam.sites) > 1 else result.patched[:, None]
    full = np.full((x.shape[0], x.shape[1], cfg.n_layers, n_pos, cfg.n_heads), np.nan)
    for idx in np.ndindex(*x.shape[2:]):
        named = dict(zip(fam.layout, idx, strict=True))
        full[:, :, named["l"], named.get("p", 0), named.get("h", 0)] = x[(slice(None), slice(None), *idx)]
    return full


def _direction(d_model, seed=3):
    return tuple(np.random.RandomState(seed).randn(d_model).tolist())


READOUTS = {
    "attn_cls_to_query": lambda cfg: AttentionWeight(1, 2, "CLS", "Q"),  # sum over from rows, mean over to
    "attn_type_to_pos_summed": lambda cfg: AttentionWeight(1, 4, "Dinj", 1, "mean", "sum"),
    "proj_resid_post": lambda cfg: Projection("resid_post", 1, "Qsub|Dinj", _direction(cfg.d_model)),
}


# every readout on head_all_pos_v; one readout suffices for the per-position families
LOOP_CASES = [(name, "head_all_pos_v") for name in READOUTS] + [
    ("attn_cls_to_query", family) for family in ("block_every", "head_by_pos_pattern", "head_by_pos_k")]


@pytest.mark.parametrize(("name", "family"), LOOP_CASES)
def test_readout_equals_the_full_forward_loop(tiny_model, pairs, batch, family, name):
    """vmapped restarted sweep = a loop of full forwards reading the captured site, for patches below, at
    and above the readout's layer; the unpatched runs give the clean and corrupted values."""
    cfg = tiny_model.cfg
    readout = READOUTS[name](cfg)
    res = activation_patch(tiny_model, batch, family, chunk_size=7,
                           readout=bind(readout, pairs, batch.n_pos, batch.n_pairs))
    stride = 1 if family == "head_all_pos_v" else 3  # every third position of the per-position families
    expected = _loop(tiny_model, batch, pairs, family, readout, stride)
    got = _canonical(res, family, cfg, batch.n_pos)
    looped = ~np.isnan(expected)
    assert np.isfinite(got[looped]).all()
    np.testing.assert_allclose(got[looped], expected[looped], atol=ENGINE_ATOL, rtol=0)
    if stride == 1:
        assert np.array_equal(np.isnan(got), np.isnan(expected))
    for p in range(batch.n_pairs):
        T = batch.n_pos
        clean = _value(tiny_model, readout, pairs[p], T, _inputs(batch, p), [])
        corrupt = _value(tiny_model, readout, pairs[p], T, _inputs(batch, p, "perturbed"), [])
        np.testing.assert_allclose(res.baseline_score[p], clean, atol=ENGINE_ATOL, rtol=0)
        np.testing.assert_allclose(res.perturbed_score[p], corrupt, atol=ENGINE_ATOL, rtol=0)
    # patches above the readout's layer cannot reach it
    np.testing.assert_allclose(got[:, :, 2], np.where(np.isnan(got[:, :, 2]), np.nan,
                                                      res.baseline_score[:, None, None, None]), atol=ENGINE_ATOL)
    assert np.nanmax(np.abs(got[:, :, :2] - res.baseline_score[:, None, None, None, None])) > 1e-4


def test_unpatched_and_fully_replaced_runs_give_the_clean_and_corrupted_values(tiny_model, pairs, batch):
    readout = AttentionWeight(2, 1, "CLS", "Q")
    bound = bind(readout, pairs, batch.n_pos, batch.n_pairs)
    res = activation_patch(tiny_model, batch, "resid_pre_all_pos", readout=bound)
    # the whole residual stream at layer 0 from the perturbed run: the perturbed run's readout
    np.testing.assert_allclose(res.patched[:, 0], res.perturbed_score, atol=ENGINE_ATOL, rtol=0)
    assert np.abs(res.perturbed_score - res.baseline_score).min() > 1e-4
    reverse = activation_patch(tiny_model, batch, "resid_pre_all_pos", readout=bound, reverse=True)
    np.testing.assert_allclose(reverse.baseline_score, res.perturbed_score, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(reverse.patched[:, 0], res.baseline_score, atol=ENGINE_ATOL, rtol=0)


def test_the_score_readout_is_bit_identical(tiny_model, batch):
    plain = activation_patch(tiny_model, batch, "head_all_pos_v")
    scored = activation_patch(tiny_model, batch, "head_all_pos_v", readout=SCORE)
    np.testing.assert_array_equal(plain.patched, scored.patched)
    np.testing.assert_array_equal(plain.baseline_score, scored.baseline_score)
    np.testing.assert_array_equal(path_to_score(tiny_model, batch).patched,
                                  path_to_score(tiny_model, batch, readout=parse_readout("score")).patched)


@pytest.fixture(scope="module")
def tiny_3label(tmp_path_factory):
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import from_hf_state_dict
    from jaxmech.hf.loading import read_state_dict, weight_files

    d = hf_checkpoint(tmp_path_factory.mktemp("tiny3"), TINY_ODD, seed=4, num_labels=3, init=0.2)
    cfg = EncoderConfig.from_hf_config(json.loads((d / "config.json").read_text()))
    return from_hf_state_dict(read_state_dict(weight_files(d)), cfg, "cross")[0]


def test_logit_margin_equals_the_full_forward_loop(tiny_3label, pairs, batch):
    readout = LogitMargin(2, 0)
    res = activation_patch(tiny_3label, batch, "head_all_pos_v", readout=readout)
    expected = _loop(tiny_3label, batch, pairs, "head_all_pos_v", readout)[:, 0, :, 0, :]
    np.testing.assert_allclose(res.patched, expected, atol=ENGINE_ATOL, rtol=0)
    clean = [_value(tiny_3label, readout, pairs[p], batch.n_pos, _inputs(batch, p), []) for p in range(2)]
    np.testing.assert_allclose(res.baseline_score, clean, atol=ENGINE_ATOL, rtol=0)


def test_logit_margin_is_refused_on_a_one_label_head(tiny_model, batch):
    with pytest.raises(ReadoutError, match="num_labels=1"):
        activation_patch(tiny_model, batch, "head_all_pos_v", readout=LogitMargin(1, 0))


def _caches(model, batch):
    sites = frozenset({"z", "q", "k", "v"})
    return (run_cached(model, *map(jnp.asarray, batch.baseline), capture=sites)[1],
            run_cached(model, *map(jnp.asarray, batch.perturbed), capture=sites)[1])


@pytest.mark.parametrize("name", ["attention", "projection"])
def test_path_to_score_with_a_layer_readout_freezes_every_other_head(tiny_model, pairs, batch, name):
    cfg = tiny_model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    readout = {"attention": AttentionWeight(2, 3, "Q", "Dinj", "mean", "sum"),
               "projection": Projection("mlp_out", 1, "Q", _direction(cfg.d_model, 5), "sum")}[name]
    res = path_to_score(tiny_model, batch, readout=bind(readout, pairs, batch.n_pos, batch.n_pairs), chunk_size=4)
    base, src = _caches(tiny_model, batch)
    for p in range(2):
        pm = jnp.asarray(batch.patchable[p], jnp.float32)
        for layer in range(L):
            for h in range(H):
                ivs = [PatchSpec("z", base["z"][p]), PatchSpec("z", src["z"][p], one_hot(layer, L), pm, one_hot(h, H))]
                expected = _value(tiny_model, readout, pairs[p], batch.n_pos, _inputs(batch, p), ivs)
                np.testing.assert_allclose(res.patched[p, layer, h], expected, atol=ENGINE_ATOL, rtol=0)
    assert np.abs(res.patched[:, :2] - res.baseline_score[:, None, None]).max() > 1e-4


@pytest.mark.parametrize("readout_layer", [2, 0])
def test_path_to_heads_with_an_attention_readout_is_a_two_stage_patch(tiny_model, pairs, batch, readout_layer):
    cfg = tiny_model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    receivers = parse_heads(["2.1", "1.3"])
    readout = AttentionWeight(readout_layer, 1, "CLS", "Q")
    res = path_to_heads(tiny_model, batch, ["2.1", "1.3"], "q",
                        readout=bind(readout, pairs, batch.n_pos, batch.n_pairs))
    base, src = _caches(tiny_model, batch)
    for p in range(2):
        inputs = _inputs(batch, p)
        pm = jnp.asarray(batch.patchable[p], jnp.float32)
        for layer in range(2):
            for h in range(H):
                ivs = [PatchSpec("z", base["z"][p]), PatchSpec("z", src["z"][p], one_hot(layer, L), pm, one_hot(h, H))]
                _, c = _forward(tiny_model, *inputs, ivs, frozenset({"q"}))
                stage2 = [PatchSpec("q", c["q"], one_hot(r, L), None, one_hot(hh, H)) for r, hh in receivers]
                expected = _value(tiny_model, readout, pairs[p], batch.n_pos, inputs, stage2)
                np.testing.assert_allclose(res.patched[p, layer, h], expected, atol=ENGINE_ATOL, rtol=0)
    if readout_layer == 0:  # below every receiver: the baseline value
        np.testing.assert_allclose(res.patched, np.broadcast_to(res.baseline_score[:, None, None], res.patched.shape),
                                   atol=ENGINE_ATOL, rtol=0)


def test_path_components_to_heads_with_a_projection_readout(tiny_model, pairs, batch):
    cfg = tiny_model.cfg
    L, H, T = cfg.n_layers, cfg.n_heads, batch.n_pos
    receivers = parse_heads(["2.1", "1.3"])
    readout = Projection("normalized_resid_post", 2, "CLS", _direction(cfg.d_model, 6))
    from jaxmech.patching import path_components_to_heads

    res = path_components_to_heads(tiny_model, batch, ["2.1", "1.3"], "v",
                                   readout=bind(readout, pairs, T, batch.n_pairs))
    _, src = run_cached(tiny_model, *map(jnp.asarray, batch.perturbed),
                        capture=frozenset({"resid_pre", "attn_out", "mlp_out"}))
    p = 1
    inputs = _inputs(batch, p)
    for c, site in enumerate(("resid_pre", "attn_out", "mlp_out")):
        for layer in range(2):
            for pos in range(0, batch.lengths[p], 4):
                spec = PatchSpec(site, src[site][p], one_hot(layer, L), one_hot(pos, T))
                _, cache = _forward(tiny_model, *inputs, [spec], frozenset({"v"}))
                stage2 = [PatchSpec("v", cache["v"], one_hot(r, L), None, one_hot(h, H)) for r, h in receivers]
                expected = _value(tiny_model, readout, pairs[p], T, inputs, stage2)
                np.testing.assert_allclose(res.patched[p, c, layer, pos], expected, atol=ENGINE_ATOL, rtol=0)


def test_a_bi_encoder_reads_attention_and_projections_and_refuses_margins(tiny_cross_dir, pairs, batch):
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import from_hf_state_dict
    from jaxmech.hf.loading import read_state_dict, weight_files

    cfg = EncoderConfig.from_hf_config(json.loads((tiny_cross_dir / "config.json").read_text()))
    state = {k: v for k, v in read_state_dict(weight_files(tiny_cross_dir)).items() if not k.startswith("classifier")}
    bi = from_hf_state_dict(state, cfg, "bi")[0]
    qe = np.random.RandomState(0).randn(batch.n_pairs, cfg.d_model).astype(np.float32)
    for readout in (AttentionWeight(1, 0, "Dinj", "Q", "mean", "sum"), Projection("resid_pre", 2, "D", _direction(30))):
        res = activation_patch(bi, batch, "head_all_pos_v", query_embedding=qe,
                               readout=bind(readout, pairs, batch.n_pos, batch.n_pairs))
        expected = _loop(bi, batch, pairs, "head_all_pos_v", readout)[:, 0, :, 0, :]
        np.testing.assert_allclose(res.patched, expected, atol=ENGINE_ATOL, rtol=0)
    with pytest.raises(ReadoutError, match="compares embeddings"):
        activation_patch(bi, batch, "head_all_pos_v", query_embedding=qe, readout=LogitMargin(1, 0))


def test_the_perturbed_run_is_read_at_the_aligned_positions(tiny_model):
    """A pair whose perturbed input has two extra tokens: the readout's positions follow the position map."""
    from jaxmech.data.records import AlignedPair

    base = [1, 20, 21, 2, 30, 31, 32, 2]
    pert = [1, 20, 21, 2, 40, 41, 30, 31, 32, 2]
    types = ["CLS", "Qplus", "Qsub", "SEP1", "Dother", "Dplus", "Dother", "SEP2"]
    pair = AlignedPair(base, [0] * 4 + [1] * 4, pert, [0] * 4 + [1] * 6, [0, 1, 2, 3, 6, 7, 8, 9], "x",
                       token_types=types)
    bound = bind(AttentionWeight(0, 0, "CLS", "Dplus|SEP2", "sum", "sum"), [pair], 12)
    np.testing.assert_array_equal(np.nonzero(bound.baseline[0, 1])[0], [5, 7])
    np.testing.assert_array_equal(np.nonzero(bound.perturbed[0, 1])[0], [7, 9])
    none = bind(AttentionWeight(0, 0, "CLS", "Dinj"), [pair], 12)
    assert np.isnan(none.baseline[0, 1]).all()  # no such position: the pair reads NaN
    with pytest.raises(ReadoutError, match="no token types"):
        bind(AttentionWeight(0, 0, "CLS", "Q"), [dataclasses.replace(pair, token_types=None)], 12)


@pytest.mark.parametrize("spec, field", [
    ("attn:10.x:CLS->Q", "head 'x'"),
    ("attn:10:CLS->Q", "head '10' is not LAYER.HEAD"),
    ("attn:1.2:CLS-Q", "positions 'CLS-Q'"),
    ("attn:1.2:CLS->Qfoo", "to 'Qfoo'"),
    ("attn:1.2:bad->Q", "from 'bad'"),
    ("attn:1.2:CLS->Q:sum", "reductions 'sum'"),
    ("attn:1.2:CLS->Q:sum,median", "to reduction 'median'"),
    ("margin:1", "labels must be I,J"),
    ("margin:1,1", "labels i and j must differ"),
    ("margin:a,1", "label i 'a'"),
    ("proj:resid_post:1:CLS", "expected proj"),
    ("proj:resid_post:x:CLS:d.npy", "layer 'x'"),
    ("proj:pattern:1:CLS:d.npy", "site 'pattern'"),
    ("proj:resid_post:1:CLS:missing.npy", "direction file .*missing.npy. cannot be read"),
    ("logits:1", "unknown kind 'logits'"),
])
def test_spec_errors_name_the_bad_field(tmp_path, spec, field):
    np.save(tmp_path / "d.npy", np.ones(4, np.float32))
    with pytest.raises(ReadoutError, match=field):
        parse_readout(spec, base_dir=tmp_path)


def test_specs_round_trip(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(4, dtype=np.float32))
    for spec in ("attn:10.7:CLS->Qplus:sum,mean", "attn:3.1:Q->5:mean,sum", "margin:1,0"):
        assert parse_readout(spec).spec() == spec
    assert parse_readout("attn:10.7:cls->qplus|qsub") == AttentionWeight(10, 7, "CLS", "Qplus|Qsub")
    proj = parse_readout("proj:resid_post:4:CLS:d.npy", base_dir=tmp_path)
    assert proj.direction == (0.0, 1.0, 2.0, 3.0) and proj.spec() == "proj:resid_post:4:CLS:d.npy:mean"
    assert parse_readout(None) is SCORE and parse_readout("score") is SCORE


def test_readouts_are_final_kinds_of_one_abstract_class_parsed_without_jax():
    import subprocess
    import sys

    from jaxmech.patching.readouts import FinalReadout, LayerReadout, Readout

    with pytest.raises(TypeError):
        Readout()
    assert issubclass(LogitMargin, FinalReadout) and issubclass(Projection, LayerReadout) and SCORE.is_score
    assert [r.kind for r in (SCORE, AttentionWeight(1, 2), LogitMargin(1, 0))] == ["score", "attn", "margin"]
    SCORE.check_shape(1, 1, 1)  # nothing to check
    with pytest.raises(ReadoutError, match="head 5 is out of range"):
        AttentionWeight(1, 5).check_shape(2, 4, 8)
    code = ("import sys; from jaxmech.patching.readouts import parse_readout; "
            "parse_readout('attn:1.2:CLS->Q'); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_run_patching_records_the_readout_and_refuses_bad_combinations(tiny_model, pairs, tmp_path):

    from jaxmech.patching.results import PatchingResult
    from jaxmech.patching.run import run_patching, summarize

    lm = tiny_lm(tiny_model, (24, 32))
    res = run_patching(lm, pairs, ["head_all_pos_v"], readout="attn:1.2:CLS->Q")
    direct = activation_patch(tiny_model, batch_pairs(pairs, buckets=(24, 32), max_length=48), "head_all_pos_v",
                              readout=bind(AttentionWeight(1, 2, "CLS", "Q"), pairs, 24, 2))
    np.testing.assert_allclose(res.raw["head_all_pos_v"], direct.patched, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(res.pairs["score_baseline"], direct.baseline_score, atol=ENGINE_ATOL, rtol=0)
    expected = (direct.patched - direct.baseline_score[:, None, None]) / \
        (direct.perturbed_score - direct.baseline_score)[:, None, None]
    np.testing.assert_allclose(res.effects["head_all_pos_v"], expected, atol=1e-4, rtol=1e-4)
    assert res.meta["readout"] == "attn:1.2:CLS->Q:sum,mean" and summarize(res)["readout"] == res.meta["readout"]
    res.save(tmp_path / "r.npz")
    assert PatchingResult.load(tmp_path / "r.npz").meta["readout"] == res.meta["readout"]
    plain = run_patching(lm, pairs, ["head_all_pos_v"])
    assert "readout" not in plain.meta
    with pytest.raises(ReadoutError, match="attribution estimates measure the score only"):
        run_patching(lm, pairs, ["head_all_pos_v"], method="attribution", readout="attn:1.2:CLS->Q")
    with pytest.raises(ReadoutError, match="layer 9 is out of range"):
        run_patching(lm, pairs, ["head_all_pos_v"], readout="attn:9.2:CLS->Q")
    with pytest.raises(ReadoutError, match="head 5 is out of range"):
        run_patching(lm, pairs, ["path_to_score"], readout="attn:1.5:CLS->Q")
    np.save(tmp_path / "short.npy", np.ones(3, np.float32))
    with pytest.raises(ReadoutError, match="direction has 3 entries"):
        run_patching(lm, pairs, ["head_all_pos_v"], readout=parse_readout(f"proj:resid_pre:1:CLS:{tmp_path}/short.npy"))


def test_the_command_line_parses_readouts_and_names_bad_fields(tiny_with_tokenizer, tmp_path, capsys):
    from jaxmech.cli import main

    ds = tmp_path / "demo.jsonl"
    assert main(["dataset", "build", "--kind", "tfc1", "--source", "demo", "--limit", "2", "--model",
                 str(tiny_with_tokenizer), "--out", str(ds)]) == 0
    out = tmp_path / "r.npz"
    base = ["patch", "--model", str(tiny_with_tokenizer), "--dataset", str(ds), "--family", "attn_out_all_pos",
            "--no-progress"]
    capsys.readouterr()
    code = main([*base, "--readout", "attn:1.1:CLS->Q", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["readout"] == "attn:1.1:CLS->Q:sum,mean"
    with np.load(out) as f:
        assert json.loads(str(f["meta"]))["readout"] == "attn:1.1:CLS->Q:sum,mean"
        raw, clean = f["raw:attn_out_all_pos"], f["score_baseline"]
        assert np.isfinite(raw).all() and np.abs(raw - clean[:, None]).max() > 0
    for spec, field in (("attn:1.x:CLS->Q", "head 'x'"), ("attn:1.1:CLS->Qfoo", "to 'Qfoo'"),
                        ("margin:1", "labels must be I,J")):
        code = main([*base, "--readout", spec, "--out", str(tmp_path / "bad.npz")])
        err = capsys.readouterr().err
        assert code == 2 and field in err and err.count("\n") == 1, err
    code = main([*base, "--readout", "margin:1,0", "--out", str(tmp_path / "bad.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "num_labels=1" in err, err


@pytest.mark.torch
@pytest.mark.parametrize("family", ["head_all_pos_v", "head_by_pos_pattern"])
def test_an_attention_readout_matches_the_pytorch_hook_implementation(tiny_cross_dir, tiny_model, family):
    """The same sweep with forward hooks on the Hugging Face model (benchmarks/baselines/torch_hooks.py), the
    attention weight read from its softmax probabilities."""
    pytest.importorskip("torch")
    from conftest import PARITY_ATOL
    from transformers import BertForSequenceClassification

    from benchmarks.baselines.torch_hooks import TorchPatcher

    pair = _typed(random_pairs(1, tiny_model.cfg.d_vocab, seed=11, d_len=(8, 9)))[0]
    T = len(pair.baseline_ids)
    batch = batch_pairs([pair], buckets=(T,), max_length=48)
    readout = AttentionWeight(1, 2, "CLS", "Q")
    ours = activation_patch(tiny_model, batch, family, readout=bind(readout, [pair], T, 1))
    patcher = TorchPatcher(BertForSequenceClassification.from_pretrained(tiny_cross_dir))
    base_inputs = (pair.baseline_ids, pair.baseline_token_type_ids, [1] * T)
    src = patcher.cache((pair.perturbed_ids, pair.perturbed_token_type_ids, [1] * T))
    patcher.attention_readout = (1, 2, _weights(pair, "CLS", "sum", T), _weights(pair, "Q", "mean", T))
    ref = {"head_all_pos_v": lambda: patcher.head_all_pos(base_inputs, src, "v"),
           "head_by_pos_pattern": lambda: patcher.head_by_pos_pattern(base_inputs, src)}[family]()
    np.testing.assert_allclose(ours.patched[0], ref, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(ours.baseline_score[0], patcher.score(base_inputs), atol=PARITY_ATOL, rtol=0)
    assert np.nanmax(np.abs(ref - ours.baseline_score[0])) > 1e-3, "patches must move the readout visibly"


SWEEP = """
[run]
name = "e7-tiny"
[model]
path = "{model}"
[[datasets]]
kind = "idf_front"
source = "demo"
[[families]]
name = "head_all_pos_v"
[patching]
metric = "difference"
readout = "{readout}"
[chunking]
pairs_per_chunk = 4
"""


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory, minilm_path):
    """A 2-layer cross-encoder with random weights and the MiniLM tokenizer (as tests/test_sweep.py)."""
    return save_tiny_cross(tmp_path_factory.mktemp("model") / "tiny-cross", minilm_path)


def test_a_sweep_declares_a_readout_on_e7_pairs(tmp_path, tiny_with_tokenizer):
    from jaxmech import results
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.run import run_patching
    from jaxmech.sweeps import load_sweep_config, run_sweep
    from jaxmech.sweeps.job import plan_sweep

    spec = "attn:1.0:CLS->@moved_positions:sum,mean"
    path = tmp_path / "e7.toml"
    path.write_text(SWEEP.format(model=tiny_with_tokenizer, readout=spec))
    assert run_sweep(path, out=tmp_path / "run", quiet=True).complete
    run = results.open(tmp_path / "run")
    assert run.meta["readout"] == spec
    from jaxmech.report.build import run_summary
    from jaxmech.results.source import open_results

    assert run_summary(open_results(tmp_path / "run"))["readout"] == spec  # the report's Run table names it
    lm = load_model(tiny_with_tokenizer)
    plan = plan_sweep(load_sweep_config(path), lm)
    assert all(p.kind == "idf_front" for p in plan.pairs) and len(plan.pairs) == run.meta["n_pairs"]
    res = run_patching(lm, plan.pairs, ["head_all_pos_v"], metric="difference", readout=spec)
    np.testing.assert_allclose(np.asarray(run.raw("head_all_pos_v")), res.raw["head_all_pos_v"], atol=ENGINE_ATOL,
                               rtol=0)
    np.testing.assert_allclose(run.pairs["score_baseline"], res.pairs["score_baseline"], atol=ENGINE_ATOL, rtol=0)
    # the unpatched runs' readout: 1.0's attention from [CLS] to the first-word positions, averaged
    p = plan.pairs[0]
    moved = p.meta["moved_positions"]
    _, cache = run_cached(lm.model, *(jnp.asarray([a]) for a in (p.baseline_ids, p.baseline_token_type_ids,
                                                                 [1] * len(p.baseline_ids))),
                          capture=frozenset({"pattern"}))
    np.testing.assert_allclose(run.pairs["score_baseline"][0], np.asarray(cache["pattern"][0, 1, 0, 0])[moved].mean(),
                               atol=ENGINE_ATOL, rtol=0)


def test_sweep_configs_check_the_readout(tmp_path, tiny_with_tokenizer):
    from jaxmech.sweeps.config import ConfigError, load_sweep_config

    base = SWEEP.format(model="m", readout="attn:1.0:CLS->Q")
    path = tmp_path / "c.toml"
    for text, message in ((base.replace("CLS->Q", "CLS->Qx"), "[patching]: readout attn:1.0: to 'Qx'"),
                          (base + "[[families]]\nname = 'head_all_pos_z'\nmethod = 'attribution'\n",
                           "[patching] readout: attribution families (head_all_pos_z)")):
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_sweep_config(path)
        assert message in str(err.value), str(err.value)
    path.write_text(base.replace('readout = "attn:1.0:CLS->Q"\n', ""))
    plain = load_sweep_config(path)
    path.write_text(base.replace('readout = "attn:1.0:CLS->Q"\n', 'readout = ""\n'))
    assert load_sweep_config(path).fingerprint() == plain.fingerprint()
    path.write_text(base)
    assert load_sweep_config(path).fingerprint() != plain.fingerprint()


def test_e7_dataset_build_on_the_shared_data(shared_data, tmp_path, capsys):
    from jaxmech.cli import main
    from jaxmech.data.records import read_dataset

    out = tmp_path / "e7.jsonl"
    code = main(["dataset", "build", "--kind", "idf_front", "--source", "shared", "--limit", "20", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    header, pairs = read_dataset(out)
    assert len(pairs) == 20 and header["kind"] == "idf_front"
    for p in pairs:
        assert p.kind == "idf_front" and p.baseline_ids != p.perturbed_ids
        assert sorted(p.baseline_ids) == sorted(p.perturbed_ids) and p.position_map == list(range(len(p.baseline_ids)))
        moved = p.meta["moved_positions"]
        assert moved == list(range(1, 1 + len(moved))) and p.term == p.meta["moved_word"]
        # the moved word's pieces open the perturbed query and sit at the baseline's Qplus positions
        qplus = [i for i, t in enumerate(p.token_types) if t == "Qplus"]
        assert [p.perturbed_ids[i] for i in moved] == [p.baseline_ids[i] for i in qplus]
    bound = bind(parse_readout("attn:10.1:CLS->@moved_positions"), pairs, 512)
    assert np.allclose(np.nansum(bound.baseline[:, 1], axis=1), 1.0)  # averaged over the word's pieces
