"""Figures: image checks (size, not blank, panels, axis and colour-bar labels) and that planted values land in
the right cells, from arrays, an in-memory store-shaped run and a `jaxmech patch`-shaped .npz."""

from __future__ import annotations

import io
import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxmech import plot as jp
from jaxmech.patching.summaries import TOKEN_TYPE_ORDER, mean_by_token_type
from jaxmech.report.synthetic import synthetic_run
from jaxmech.results.source import Labeled, NpzSource, ResultsError, StoreSource


@pytest.fixture(scope="module")
def run():
    return synthetic_run(n_pairs=4, seq=14)


def png_of(fig, dpi=60) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return mpimg.imread(buf)


def assert_image(fig, *, min_w=200, min_h=150):
    img = png_of(fig)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    rgb = img[..., :3]
    non_white = (rgb < 0.95).any(-1).mean()
    assert non_white > 0.05, f"image looks blank ({non_white:.3f} non-white)"
    assert rgb.std() > 0.05


def axes_with_images(fig):
    return [ax for ax in fig.axes if ax.images]


def colorbar_labels(fig):
    return [ax.get_ylabel() for ax in fig.axes if not ax.images and ax.get_ylabel()]


def test_block_patching_panels_labels_and_token_type_means(run):
    fig = jp.block_patching(run)
    assert_image(fig, min_w=600)
    panels = axes_with_images(fig)
    assert [ax.get_title() for ax in panels] == ["resid_pre", "attn_out", "mlp_out"]
    assert panels[0].get_xlabel() == "token type" and panels[0].get_ylabel() == "layer"
    assert [t.get_text() for t in panels[0].get_xticklabels()] == list(TOKEN_TYPE_ORDER)
    assert any("normalized patching effect" in lab for lab in colorbar_labels(fig))
    # the drawn cells equal the token-type means computed independently
    expected, _ = mean_by_token_type(np.asarray(run["block_every"]), run.pairs["token_types"], pos_axis=3)
    cells = jp.heatmap_cells(fig)
    for c, grid in enumerate(cells):
        np.testing.assert_allclose(grid.values, expected[c], rtol=0, atol=1e-12)
    # planted: resid_pre at Dinj in layer 0 is ~1 and the scale is symmetric about zero
    assert cells[0].values[0, TOKEN_TYPE_ORDER.index("Dinj")] == pytest.approx(1.0, abs=0.05)
    im = panels[0].images[0]
    assert im.norm.vmin == -im.norm.vmax


def test_block_patching_by_position_from_a_plain_array():
    values = np.zeros((3, 4, 7))
    values[1, 2, 5] = 0.7
    fig = jp.block_patching(values, dims=("component", "layer", "pos"))
    cells = jp.heatmap_cells(fig)
    assert cells[1].values[2, 5] == 0.7 and cells[1].panel == "attn_out"
    assert axes_with_images(fig)[0].get_xlabel() == "position"
    label = cells[1].label(2, 5)
    assert "layer 2" in label and "position 5" in label and "0.7000" in label
    with pytest.raises(ResultsError, match="dims"):
        jp.block_patching(values, dims=("layer", "pos"))


def test_head_heatmap_planted_head_and_highlight():
    values = np.zeros((5, 12, 12))
    values[:, 10, 1] = 0.2
    values[0, 3, 4] = np.nan  # a flagged pair's NaN is ignored, not propagated
    fig = jp.head_heatmap(values, family="path_to_score", highlight=["10.1", "10.10"])
    assert_image(fig)
    grid = jp.heatmap_cells(fig)[0]
    assert grid.values.shape == (12, 12) and grid.values[10, 1] == pytest.approx(0.2)
    assert grid.values[3, 4] == 0.0
    assert grid.label(10, 1).endswith("layer 10 · head 1")
    ax = axes_with_images(fig)[0]
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    assert len(ax.patches) == 2  # the two outlined heads
    assert "outlined" in " ".join(fig._suptitle.get_text().split())


def test_head_by_position_picks_planted_heads(run):
    fig = jp.head_by_position(run, top_k=4)
    assert_image(fig)
    ax = axes_with_images(fig)[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert set(rows) == {"10.1", "10.10", "10.7", "10.4"}
    grid = jp.heatmap_cells(fig)[0]
    assert np.all(grid.values[:, TOKEN_TYPE_ORDER.index("CLS")] > 0.25)
    fig2 = jp.head_by_position(run, heads=["7.9", "0.8"])
    assert [t.get_text() for t in axes_with_images(fig2)[0].get_yticklabels()] == ["7.9", "0.8"]
    with pytest.raises(ResultsError, match="outside"):
        jp.head_by_position(run, heads=["12.0"])


def test_path_patching_families(run):
    fig = jp.path_patching(run, family="path_to_heads_k")  # the store's key: family + receiver input
    assert_image(fig)
    assert "E5 path patching" in " ".join(fig._suptitle.get_text().split()) and "(receiver 10.1, input k)" in " ".join(
        fig._suptitle.get_text().split()
    )
    fig = jp.path_patching(run, family="path_components_to_heads_k")
    assert len(axes_with_images(fig)) == 3
    with pytest.raises(ResultsError, match="not a path-patching family"):
        jp.path_patching(run, family="block_every")


@pytest.mark.parametrize(
    "name, n_panels",
    [("soft_tf", 3), ("idf_svd", 1), ("idf_svd_scatter", 1), ("edit_idf", 2), ("linear_bm25", 1), ("circuit", 1)],
)
def test_analysis_figures(run, name, n_panels):
    fig = jp.plot(run, name)
    assert_image(fig)
    data_axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(data_axes) == n_panels
    assert all(ax.get_ylabel() for ax in data_axes)


def test_regression_scatter_names_ours_and_the_papers_r(run):
    fig = jp.regression_scatter(run.analyses["linear_bm25"])
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    r = run.analyses["linear_bm25"]["test_pearson"]
    assert f"linear r = {r:.3f} (paper 0.8157)" in text and "BM25 r = 0.400 (paper 0.42)" in text


def test_analysis_errors_name_what_is_missing(run):
    bad = dict(run.analyses["linear_bm25"])
    del bad["test_predictions"]
    with pytest.raises(ResultsError, match="missing key 'test_predictions'"):
        jp.regression_scatter(bad)
    with pytest.raises(ResultsError, match="expected 'soft_tf'"):
        jp.soft_tf_curves(run.analyses["idf_svd"])


def test_store_source_token_types_and_missing_family(run):
    src = StoreSource(run, "/runs/x")
    lab = src.by_token_type("head_by_pos_z")
    assert lab.dims == ("layer", "head", "token_type") and lab.values.shape == (12, 12, len(TOKEN_TYPE_ORDER))
    with pytest.raises(ResultsError, match=r"/runs/x: no results for family 'head_all_pos_z'"):
        src.array("head_all_pos_z")
    with pytest.raises(ResultsError, match="no family or analysis 'nope'"):
        jp.plot(src, "nope")


def write_patch_npz(path, *, single: bool):
    """An .npz laid out as `jaxmech patch` writes it (single triple: no pair axis)."""
    rng = np.random.default_rng(0)
    n, L, T, H = (1 if single else 3), 6, 9, 12
    block = rng.normal(0, 0.1, (n, 3, L, T))
    arrays = {
        "block_every": block[0] if single else block,
        "path_to_score": rng.normal(0, 0.1, (L, H)) if single else rng.normal(0, 0.1, (n, L, H)),
        "score_baseline": np.float32(-1) if single else np.zeros(n, np.float32),
        "score_perturbed": np.float32(2) if single else np.ones(n, np.float32),
        "lengths": np.full(n, T),
        "names": np.array([str(i) for i in range(n)]),
        "flagged": np.zeros(n, bool),
        "meta": np.array(json.dumps({"model": "some/model", "kind": "cross", "metric": "normalized"})),
    }
    if not single:
        arrays["by_type:block_every"] = rng.normal(0, 0.1, (3, L, len(TOKEN_TYPE_ORDER)))
        arrays["token_type_names"] = np.array(TOKEN_TYPE_ORDER)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("single", [True, False])
def test_npz_source_and_plot_cli(tmp_path, capsys, single):
    from jaxmech.cli import main

    f = tmp_path / "r.npz"
    arrays = write_patch_npz(f, single=single)
    src = NpzSource(f)
    assert src.families == ["block_every", "path_to_score"]
    assert src.array("block_every").dims == ("pair", "component", "layer", "pos")
    bt = src.by_token_type("block_every")
    if single:
        assert bt is None
    else:
        np.testing.assert_array_equal(bt.values, arrays["by_type:block_every"])
    out = tmp_path / "fig.png"
    assert main(["plot", str(f), "block_every", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    img = mpimg.imread(out)
    assert img.shape[1] > 600 and (img[..., :3] < 0.95).any(-1).mean() > 0.05
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # hidden temporary files included
    assert main(["plot", str(f), "head_all_pos_v", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{f}: no family or analysis 'head_all_pos_v'" in err[0]


def test_labeled_checks_its_axes():
    with pytest.raises(ResultsError, match="2 axes"):
        Labeled(np.zeros((2, 3)), ("layer",))
    with pytest.raises(ResultsError, match="labels for axis 'head'"):
        Labeled(np.zeros((2, 3)), ("layer", "head"), {"head": ("a",)})


def test_store_means_skip_flagged_pairs_chunk_by_chunk():
    run = synthetic_run(n_pairs=5, seq=10)
    block = np.asarray(run["block_every"]).copy()
    block[3] = 1e6  # a flagged pair's effect (near-zero denominator) must not reach any mean
    run.arrays["block_every"].values = block
    run.pairs["flagged"] = np.array([False, False, False, True, False])
    src = StoreSource(run, "/runs/x")
    keep = ~run.pairs["flagged"]
    mean, n = src.pair_mean("block_every")
    assert n == 4 and mean.dims == ("component", "layer", "pos")
    np.testing.assert_allclose(mean.values, np.nanmean(block[keep], axis=0), rtol=0, atol=1e-12)
    bt = src.by_token_type("block_every")
    types = [t for t, k in zip(run.pairs["token_types"], keep, strict=True) if k]
    expected, _ = mean_by_token_type(block[keep], types, pos_axis=3)
    np.testing.assert_allclose(bt.values, expected, rtol=0, atol=1e-12)
    assert np.nanmax(jp.heatmap_cells(jp.block_patching(src))[0].values) < 10


@pytest.mark.parametrize("T", [12, 64, 256])
def test_position_tick_labels_never_overlap(T):
    """`jaxmech plot --by pos`: from position 10 on, two-digit labels overlapped; now every k-th is labelled."""
    values = np.zeros((3, 6, T))
    fig = jp.block_patching(values, dims=("component", "layer", "pos"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in axes_with_images(fig):
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), [t.get_text() for t in labels]
        texts = [int(t.get_text()) for t in labels]
        assert texts[0] == 0 and len(texts) >= min(T, 5)  # labelled evenly, from position 0
        assert len({b - a for a, b in zip(texts, texts[1:], strict=False)}) <= 1
