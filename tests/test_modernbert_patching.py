"""Patching on ModernBERT (pre-LN blocks, rotary positions, alternating local / global attention, GeGLU): the
batched, restarted sweeps (`jaxmech.patching.engines.pre_ln`) equal a loop of full forwards with `PatchSpec`
interventions (the definition), agree with PyTorch forward hooks on transformers' ModernBERT
(`ModernBertTorchPatcher`), path patching included, and families ModernBERT cannot run are refused by name."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, PARITY_ATOL
from conftest import forward_jit as _forward
from test_archs_patching import random_pairs
from test_modernbert import TINY, _state, build
from test_patching import _as_canonical, _source

from jaxmech.hf.convert import modernbert_from_hf_state_dict as from_hf_state_dict
from jaxmech.interventions import HeadReplacement, PatchSpec, one_hot
from jaxmech.models.modernbert import MODERNBERT_SITES, ModernBertConfig
from jaxmech.patching import batch_pairs
from jaxmech.patching.caches import run_cached
from jaxmech.patching.engines.pre_ln import modernbert_patch
from jaxmech.patching.families import get_family
from jaxmech.patching.runners import run_family

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
CHUNK = 7  # odd: the last chunk has padding items
RECEIVERS = [(2, 1), (3, 4)]  # layer 2 is sliding-window, layer 3 global (TINY's layer types)


@pytest.fixture(scope="module")
def mb():
    """(jaxmech model, HF model, padded batch of two pairs, its first pair) on a tiny random ModernBERT. One padded
    batch shape and one chunk size per family (`CHUNK`) throughout, so each family compiles once per module."""
    hf = build(TINY, bias=True, pooling="cls", seed=11, init=0.2)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    pairs = random_pairs(2, model.cfg.d_vocab, "bert", seed=1, d_len=(7, 12))  # [CLS]=1 q [SEP]=2 d [SEP]=2
    batch = batch_pairs(pairs, pad_id=model.cfg.pad_token_id, buckets=(24,), max_length=model.cfg.max_length)
    n = len(pairs[0].baseline_ids)
    assert batch.baseline[0][0, :n].tolist() == list(pairs[0].baseline_ids) and batch.lengths[0] == n < 24
    return model, hf, batch, pairs[0]


def _inputs(batch, p, which="baseline"):
    return [jnp.asarray(a[p]) for a in getattr(batch, which)]


def test_the_batch_is_padded_and_local_windows_matter(mb):
    model, _, batch, _ = mb
    ids, _, mask = batch.baseline
    assert (mask == 0).any() and (ids[mask == 0] == model.cfg.pad_token_id).all()
    assert batch.lengths.max() > model.cfg.local_attention // 2 + 1, "some keys lie outside the sliding window"


_CACHES = {}


def _perturbed_cache(model, batch):
    """The perturbed runs' activations at every site (one compile for all the loop references)."""
    key = (id(model), id(batch))
    if key not in _CACHES:
        _CACHES[key] = _source(model, batch, MODERNBERT_SITES)
    return _CACHES[key]


def _sampled_loop(model, batch, family, n_pos=3, seed=0):
    """A family's patches by its definition (each its own full forward with a one-hot `PatchSpec`) at every
    pair, site, layer and head, and at ``n_pos`` patchable positions per pair (the first, the last and random
    ones; every position is checked by the post-LN engine's full-grid test): ``{index: score}``."""
    fam = get_family(family)
    cfg = model.cfg
    src = _perturbed_cache(model, batch)
    rng = np.random.RandomState(seed)
    out = {}
    for p in range(batch.n_pairs):
        inputs = _inputs(batch, p)
        pos_all = np.nonzero(batch.patchable[p])[0]
        sample = sorted({pos_all[0], pos_all[-1], *rng.choice(pos_all, n_pos - 2, replace=False)})
        for c, site in enumerate(fam.sites):
            for layer in range(cfg.n_layers):
                for pos in (sample if fam.per_pos else [None]):
                    for h in (range(cfg.n_heads) if fam.per_head else [None]):
                        pm = (one_hot(pos, batch.n_pos) if pos is not None
                              else jnp.asarray(batch.patchable[p], jnp.float32))
                        hm = one_hot(h, cfg.n_heads) if h is not None else None
                        spec = PatchSpec(site, src[site][p], one_hot(layer, cfg.n_layers), pm, hm)
                        out[p, c, layer, pos or 0, h or 0] = float(_forward(model, *inputs, [spec])[0])
    return out


def _patched_sites(batch, family, n_layers, n_heads):
    """Where a family's canonical ``[pair, component, layer, pos, head]`` array is patched (not NaN)."""
    fam = get_family(family)
    where = np.zeros((batch.n_pairs, len(fam.sites), n_layers, batch.n_pos, n_heads), bool)
    pos = batch.patchable if fam.per_pos else np.eye(batch.n_pos, dtype=bool)[[0] * batch.n_pairs]
    where[..., :n_heads if fam.per_head else 1] = pos[:, None, None, :, None]
    return where


@pytest.mark.parametrize("family", ["head_all_pos_v", "head_by_pos_pattern", "head_all_pos_q",
                                    "normalized_resid_mid_all_pos", "resid_post_by_pos", "block_every"])
def test_vmapped_restarted_sweep_equals_a_loop_of_full_forwards(mb, family):
    model, _, batch, _ = mb
    cfg = model.cfg
    result = modernbert_patch(model, batch, family, chunk_size=CHUNK)
    got = _as_canonical(result, family, cfg.n_layers, batch.n_pos, cfg.n_heads)
    assert np.array_equal(~np.isnan(got), _patched_sites(batch, family, cfg.n_layers, cfg.n_heads)), \
        "patched exactly the patchable sites"
    expected = _sampled_loop(model, batch, family)
    idx = tuple(np.asarray(list(expected)).T)
    assert len(expected) >= batch.n_pairs * cfg.n_layers and np.isfinite(got[idx]).all()
    np.testing.assert_allclose(got[idx], list(expected.values()), atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(result.baseline_score, [_forward(model, *_inputs(batch, p), [])[0] for p in range(2)],
                               atol=ENGINE_ATOL, rtol=0)
    assert np.nanmax(np.abs(got - result.baseline_score[:, None, None, None, None])) > 1e-3, "visible effects"


def test_invariants_a_full_embedding_patch_is_the_perturbed_run(mb):
    """Patching resid_pre at layer 0 everywhere the pairs differ gives the perturbed score (the specials and
    the query are the same tokens in both runs); reverse swaps the roles."""
    model, _, batch, _ = mb
    res = modernbert_patch(model, batch, "resid_pre_all_pos")
    np.testing.assert_allclose(res.patched[:, 0], res.perturbed_score, atol=ENGINE_ATOL, rtol=0)
    rev = modernbert_patch(model, batch, "resid_pre_all_pos", reverse=True)
    np.testing.assert_allclose(rev.baseline_score, res.perturbed_score, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(rev.patched[:, 0], res.baseline_score, atol=ENGINE_ATOL, rtol=0)


def _path_loop(model, batch, family, receiver_input="k", n_pos=3, seed=0):
    """Path families by their definition: full forwards with frozen z (or a component patch) capturing the
    receivers' inputs, then a fresh baseline forward with only those inputs replaced. Components are patched at
    ``n_pos`` patchable positions per pair (the first, the last, random ones); NaN elsewhere."""
    rng = np.random.RandomState(seed)
    cfg = model.cfg
    L, H, T = cfg.n_layers, cfg.n_heads, batch.n_pos
    sites = ("z",) if family != "path_components_to_heads" else ("resid_pre", "attn_out", "mlp_out")
    src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset(sites))[1]
    base = run_cached(model, *map(jnp.asarray, batch.baseline), capture=frozenset({"z"}))[1]
    r_max = max(r for r, _ in RECEIVERS)
    outs = []
    for p in range(batch.n_pairs):
        inputs = _inputs(batch, p)
        patchable = jnp.asarray(batch.patchable[p], jnp.float32)

        def stage2(specs, inputs=inputs):
            if family == "path_to_score":
                return float(_forward(model, *inputs, specs)[0])
            cache = _forward(model, *inputs, specs, capture=frozenset({receiver_input}))[1][receiver_input]
            patches = [HeadReplacement(receiver_input, r, one_hot(h, H), cache[r]) for r, h in RECEIVERS]
            return float(_forward(model, *inputs, patches)[0])

        if family == "path_components_to_heads":
            out = np.full((3, r_max, T), np.nan)
            for c, site in enumerate(sites):
                for layer in range(r_max):
                    pos_all = np.nonzero(batch.patchable[p])[0]
                    for pos in {pos_all[0], pos_all[-1], *rng.choice(pos_all, n_pos - 2, replace=False)}:
                        out[c, layer, pos] = stage2([PatchSpec(site, src[site][p], one_hot(layer, L),
                                                               one_hot(pos, T))])
        else:
            out = np.full((L if family == "path_to_score" else r_max, H), np.nan)
            for layer, head in np.ndindex(*out.shape):
                freeze = PatchSpec("z", base["z"][p], (jnp.arange(L) > layer).astype(jnp.float32))
                out[layer, head] = stage2([PatchSpec("z", src["z"][p], one_hot(layer, L), patchable,
                                                     one_hot(head, H)), freeze])
        outs.append(out)
    return np.stack(outs)


@pytest.mark.parametrize("family", ["path_to_score", "path_to_heads", "path_components_to_heads"])
def test_path_families_equal_their_definition(mb, family):
    model, _, batch, _ = mb
    res = modernbert_patch(model, batch, family, receivers=RECEIVERS, receiver_input="q", chunk_size=5)
    expected = _path_loop(model, batch, family, "q")
    assert res.patched.shape == expected.shape
    if family == "path_components_to_heads":  # every layer below the last receiver, at the patchable positions
        assert np.array_equal(np.isfinite(res.patched), np.broadcast_to(batch.patchable[:, None, None],
                                                                        res.patched.shape))
        sampled = np.isfinite(expected)
        assert sampled.sum() >= 2 * 3 * 3 * 2
        np.testing.assert_allclose(res.patched[sampled], expected[sampled], atol=ENGINE_ATOL, rtol=0)
    else:
        assert np.isfinite(res.patched).all() and np.isfinite(expected).all()
        np.testing.assert_allclose(res.patched, expected, atol=ENGINE_ATOL, rtol=0)
    assert np.nanmax(np.abs(expected - res.baseline_score.reshape(-1, *[1] * (expected.ndim - 1)))) > 1e-4


@pytest.fixture(scope="module")
def torch_setup(mb):
    from benchmarks.baselines.torch_hooks import ModernBertTorchPatcher

    _, hf, _, pair = mb
    n = len(pair.baseline_ids)
    base_inputs = (pair.baseline_ids, [0] * n, [1] * n)
    pert_inputs = (pair.perturbed_ids, [0] * n, [1] * n)
    patcher = ModernBertTorchPatcher(hf)
    return patcher, base_inputs, pert_inputs, patcher.cache(base_inputs), patcher.cache(pert_inputs)


def _first_pair(res, batch, n):
    """Row 0 of a result on the padded batch, its position axes trimmed to the pair's ``n`` tokens."""
    return res.patched[0][tuple(slice(0, n) if d == batch.n_pos else slice(None) for d in res.patched.shape[1:])]


@pytest.mark.parametrize("family", ["head_all_pos_v", "head_all_pos_k", "path_to_score", "path_to_heads",
                                    "head_by_pos_z", "head_by_pos_pattern"])
def test_patching_matches_pytorch_hooks_on_transformers_modernbert(mb, torch_setup, family):
    """jaxmech on the padded batch (its first pair) against PyTorch hooks on the unpadded pair; block_every:
    the sampled test below."""
    model, _, batch, _ = mb
    patcher, base_inputs, pert_inputs, base, src = torch_setup
    path = family.startswith("path")
    res = modernbert_patch(model, batch, family, receivers=RECEIVERS if path else (), receiver_input="k",
                           chunk_size=None if path else CHUNK)
    np.testing.assert_allclose(res.baseline_score[0], patcher.score(base_inputs), atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(res.perturbed_score[0], patcher.score(pert_inputs), atol=PARITY_ATOL, rtol=0)
    # per-position families: the hooks at 3 (position, head) sites of every layer (the engine's full grid is
    # checked against the loop of full forwards above)
    rng = np.random.RandomState(1)
    pos_all = np.nonzero(batch.patchable[0])[0]
    sites = [(layer, int(rng.choice(pos_all)), int(rng.randint(model.cfg.n_heads)))
             for layer in range(model.cfg.n_layers) for _ in range(3)]
    if family == "head_by_pos_pattern":  # its axes are [layer, head, query_pos]
        sites = [(layer, head, pos) for layer, pos, head in sites]
    ref = {"head_all_pos_v": lambda: patcher.head_all_pos(base_inputs, src, "v"),
           "head_all_pos_k": lambda: patcher.head_all_pos(base_inputs, src, "k"),
           "head_by_pos_z": lambda: patcher.head_by_pos_z(base_inputs, src, sites),
           "head_by_pos_pattern": lambda: patcher.head_by_pos_pattern(base_inputs, src, sites),
           "path_to_score": lambda: patcher.path_to_score(base_inputs, base, src),
           "path_to_heads": lambda: patcher.path_to_heads(base_inputs, base, src, RECEIVERS, "k")}[family]()
    ours = _first_pair(res, batch, len(base_inputs[0]))
    assert ours.shape == ref.shape
    if family.startswith("head_by_pos"):
        idx = tuple(np.asarray(sites).T)
        assert np.isfinite(ref).sum() == len(set(sites)) and np.isfinite(ours[idx]).all()
        ours, ref = ours[idx], ref[idx]
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)
    assert np.abs(ref - patcher.score(base_inputs)).max() > 1e-3, "patches must have visible effects"


def test_the_modernbert_hook_reference_masks_padding_and_windows(mb, torch_setup):
    """The reference's attention function gets eager's padding and sliding-window mask: a padded input scores as
    the unpadded one and as jaxmech on the padded batch, and the recorded patterns of sliding-window layers are
    zero beyond the window."""
    model, _, batch, _ = mb
    patcher, base_inputs, _, _, _ = torch_setup
    n_pad = 6
    padded = tuple(list(a) + [fill] * n_pad for a, fill in zip(base_inputs, (model.cfg.pad_token_id, 0, 0),
                                                                  strict=True))
    ref = patcher.score(base_inputs)
    assert abs(patcher.score(padded) - ref) < PARITY_ATOL
    for p in range(batch.n_pairs):
        row = tuple(a[p].tolist() for a in batch.baseline)
        ours = float(_forward(model, *_inputs(batch, p), [])[0])
        assert abs(patcher.score(row) - ours) < PARITY_ATOL
    pattern = patcher.cache(padded)["pattern"]
    T = len(padded[0])
    far = np.abs(np.arange(T)[:, None] - np.arange(T)[None, :]) > model.cfg.local_attention // 2
    real = T - n_pad  # rows of real queries (padding queries' rows are not used)
    assert (pattern[1][0][:, :real][:, far[:real]] == 0).all() and (pattern[0][0][:, :real, real:] == 0).all()
    assert (pattern[0][0][:, :real, :real] > 0).all()


def test_block_every_matches_pytorch_hooks_on_a_sample_of_sites(mb, torch_setup):
    """resid_pre (restarted from the patched running sum), attn_out and mlp_out in global and sliding-window
    layers, at [CLS], the query, the document and the final [SEP]."""
    model, _, batch, _ = mb
    patcher, base_inputs, _, _, src = torch_setup
    T = len(base_inputs[0])
    sites = [(0, 0, 1), (0, 2, T - 3), (1, 1, 0), (1, 3, T - 1), (2, 0, T - 2), (2, 2, 4), (0, 3, 0)]
    ref = patcher.block_every(base_inputs, src, sites)
    ours = _first_pair(modernbert_patch(model, batch, "block_every", chunk_size=CHUNK), batch, T)
    idx = tuple(np.asarray(sites).T)
    np.testing.assert_allclose(ours[idx], ref[idx], atol=PARITY_ATOL, rtol=0)
    assert np.isfinite(ref).sum() == len(sites) and np.abs(ref[idx] - patcher.score(base_inputs)).max() > 1e-3


def test_the_registry_dispatches_and_refuses_what_modernbert_lacks_by_name(mb):
    model, _, batch, _ = mb
    res = run_family("mlp_out_all_pos", model, batch)
    np.testing.assert_allclose(res.patched, modernbert_patch(model, batch, "mlp_out_all_pos").patched,
                               atol=ENGINE_ATOL, rtol=0)
    from jaxmech.patching import activation_patch, path_to_heads, path_to_score

    np.testing.assert_allclose(activation_patch(model, batch, "mlp_out_all_pos").patched, res.patched,
                               atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(path_to_score(model, batch).patched,
                               modernbert_patch(model, batch, "path_to_score").patched, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(path_to_heads(model, batch, ["2.1"], "v").patched,
                               modernbert_patch(model, batch, "path_to_heads", receivers=["2.1"],
                                                receiver_input="v").patched, atol=ENGINE_ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"normalized_resid_post_by_pos patches \['normalized_resid_post'\].*pre-LN"):
        modernbert_patch(model, batch, "normalized_resid_post_by_pos")
    with pytest.raises(ValueError, match=r"head_all_pos_result .*per-head output"):
        run_family("head_all_pos_result", model, batch)
    with pytest.raises(ValueError, match=r"head_all_pos_result .*per-head output"):  # attribution asks the engine too
        run_family("head_all_pos_result", model, batch, method="attribution")
    with pytest.raises(ValueError, match=r"heads_joint: head-group patching is not available on ModernBERT"):
        run_family("heads_joint", model, batch, groups=[["0.0"]])
    with pytest.raises(ValueError, match="method='attribution' is not available"):
        run_family("path_to_score", model, batch, method="attribution")
    with pytest.raises(ValueError, match="receiver head 9.0 is out of range"):
        modernbert_patch(model, batch, "path_to_heads", receivers=["9.0"])


TRIPLES = [("what is the capital of france", "paris is a city", "paris is a city of france"),
           ("a cat", "a cat sat on a mat", "a cat sat on a mat a cat")]


@pytest.fixture(scope="module")
def mb_folder(tmp_path_factory):
    """A tiny ModernBERT folder with a local byte-level BPE tokenizer (`arch_checkpoints.modernbert_tokenizer`)."""
    from arch_checkpoints import modernbert_tokenizer

    folder = tmp_path_factory.mktemp("modernbert")
    hf_tok = modernbert_tokenizer(folder)
    ids = {t: hf_tok.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    sizes = dict(TINY, vocab_size=len(hf_tok), pad_token_id=ids["[PAD]"], cls_token_id=ids["[CLS]"],
                 sep_token_id=ids["[SEP]"], bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"])
    build(sizes, bias=False, pooling="cls", seed=12, init=0.2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder_run(mb_folder):
    """`run_patching` in-process on `load_model` of the folder: (loaded model, pairs, raw result)."""
    from jaxmech.data.align import align_with_filler
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.run import run_patching

    lm = load_model(mb_folder)
    pairs = [align_with_filler(lm.tokenizer, *t, name=f"t{i}") for i, t in enumerate(TRIPLES)]
    return lm, pairs, run_patching(lm, pairs, ["head_all_pos_v", "path_to_score"], metric="raw")


def test_run_patching_runs_a_modernbert_folder_with_its_tokenizer(folder_run):
    """End to end through `load_model` and `run_patching` (length buckets, metric) on a ModernBERT folder with a
    local BPE tokenizer: filler-aligned text triples (filler ``Ġa``), activation and path families; the raw
    patched scores equal `modernbert_patch` on the same batch."""
    from jaxmech.models.modernbert import ModernBertCrossEncoder

    lm, pairs, res = folder_run
    assert isinstance(lm.model, ModernBertCrossEncoder) and lm.kind == "cross"
    tok = lm.tokenizer
    batch = batch_pairs(pairs, pad_id=tok.pad_id, max_length=tok.max_length)
    for fam in ("head_all_pos_v", "path_to_score"):
        np.testing.assert_allclose(res.raw[fam], modernbert_patch(lm.model, batch, fam).patched, atol=ENGINE_ATOL,
                                   rtol=0)
    assert np.isfinite(res.raw["path_to_score"]).all()


def test_jaxmech_patch_on_a_modernbert_folder_equals_run_patching(mb_folder, folder_run, tmp_path, capsys):
    """``jaxmech patch --model DIR`` on the local ModernBERT folder writes what `run_patching` computes
    in-process on the same triples (every array of the ``.npz``: raw scores, metric, lengths)."""
    import json

    from jaxmech.cli import main

    _, _, res = folder_run
    triples = tmp_path / "t.tsv"
    triples.write_text("query\tbaseline_doc\tperturbed_doc\n" + "".join("\t".join(t) + "\n" for t in TRIPLES))
    out = tmp_path / "r.npz"
    code = main(["patch", "--model", str(mb_folder), "--triples", str(triples), "--family", "head_all_pos_v",
                 "--family", "path_to_score", "--metric", "raw", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["pairs"] == 2
    expected = res.arrays()
    with np.load(out) as got:
        for key in ("head_all_pos_v", "raw:head_all_pos_v", "path_to_score", "raw:path_to_score",
                    "score_baseline", "score_perturbed", "lengths"):
            np.testing.assert_allclose(got[key], expected[key], atol=ENGINE_ATOL, rtol=0, err_msg=key)
        assert np.ptp(got["score_perturbed"] - got["score_baseline"]) > 0
        assert json.loads(str(got["meta"]))["metric"] == "raw"


def test_attribution_is_the_derivative_of_the_patch_at_zero(mb):
    """Attribution estimates on ModernBERT (through the registry) are d score / d alpha of the exact patch at
    alpha = 0, taken by forward-mode differentiation of the full forward."""
    import jax

    model, _, batch, _ = mb
    cfg = model.cfg
    L, H, T = cfg.n_layers, cfg.n_heads, batch.n_pos
    est = run_family("head_by_pos_z", model, batch, method="attribution")
    assert est.family == "attribution:head_by_pos_z"
    src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset({"z"}))[1]
    @jax.jit
    def derivative(ids, tt, mask, source, layer, pos, head):
        def score(alpha):
            spec = PatchSpec("z", source, one_hot(layer, L), one_hot(pos, T), one_hot(head, H), alpha)
            return model.forward_one(ids, tt, mask, interventions=[spec]).score

        return jax.jvp(score, (0.0,), (1.0,))[1]

    rng = np.random.RandomState(0)
    checked = []
    for p in range(2):
        for _ in range(5):
            layer, pos, head = rng.randint(L), rng.randint(batch.lengths[p]), rng.randint(H)
            if not batch.patchable[p, pos]:
                continue
            deriv = derivative(*_inputs(batch, p), src["z"][p], layer, pos, head)
            np.testing.assert_allclose(est.patched[p, layer, pos, head] - est.baseline_score[p], deriv,
                                       atol=ENGINE_ATOL, rtol=1e-4)
            checked.append(float(deriv))
    assert len(checked) >= 5 and max(map(abs, checked)) > 1e-4, "the derivatives must not all vanish"
