"""The report in a real browser: headless Chromium (the Debian package) loads it with no console or page
errors, every figure is laid out with a size and its embedded PNG decodes, and a screenshot is taken.
Installs nothing: skips with the reason when no Chromium is installed."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest

from jaxmech.report.browser import check_page, find_chromium, screenshot
from jaxmech.report.build import build_report
from jaxmech.report.synthetic import synthetic_run

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)"
)


def test_page_loads_cleanly_and_every_figure_is_visible(tmp_path):
    page = build_report(synthetic_run(n_pairs=3, seq=10), tmp_path / "report", score_demo=False)
    probe = check_page(page)
    assert probe["errors"] == [] and probe["console"] == [], (probe["errors"], probe["console"])
    figures = probe["figures"]
    assert len(figures) == page.read_text().count("<figure ") >= 10
    for f in figures:
        assert f["visible"] and f["png"] and f["width"] > 200 and f["height"] > 150, f
        assert probe["decoded"][f["id"]] > 300, f["id"]  # the data-URI PNG decoded in the browser
    heatmaps = {f["id"]: f["cells"] for f in figures}
    assert heatmaps["fig-path_to_score"] == 12 * 12 and heatmaps["fig-block_every"] == 3 * 12 * 9
    shot = screenshot(page, tmp_path / "report.png", width=1280, height=1400)
    img = mpimg.imread(shot)
    assert img.shape[:2] == (1400, 1280)
    assert (img[..., :3] < 0.9).any(-1).mean() > 0.02  # text and tables were painted
