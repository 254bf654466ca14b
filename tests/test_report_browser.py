"""The report opens in a real browser: headless Chromium renders every figure and the tables.

Uses the session's ``tiny`` reproduction (see reproduce_support.tiny_reproduction). Without
Chromium the browser tests are skipped on a workstation (Debian: ``apt-get install chromium``)
and FAIL under ``CI=true``: CI must run them (.ci/run installs Chromium when missing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reproduce_support import parse_html, tiny_reproduction

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = [pytest.mark.browser]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_chromium() -> str:
    """The Chromium executable; a failure under CI=true, a skip elsewhere, when there is none."""
    if CHROMIUM is None:
        message = "headless Chromium is not installed (apt-get install chromium; .ci/run installs it)"
        if in_ci():
            pytest.fail(f"CI=true but {message}: the browser tests must run in CI")
        pytest.skip(f"{message}; CI=true makes this a failure")
    return CHROMIUM


def chromium(args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium with no network services, no GPU and a throw-away profile."""
    cmd = [require_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return tiny_reproduction(tmp_path_factory)["out"] / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    page = parse_html(text)
    assert page.images, "the report has no figures"
    assert all(img["src"].startswith("data:image/") for img in page.images)
    # nothing fetched from anywhere: no external scripts, styles, fonts or frames
    assert not re.search(r"<(script|link|iframe)[^>]+(src|href)=", text)
    assert "url(" not in text


def test_every_figure_renders_in_chromium(report, tmp_path):
    require_chromium()
    text = report.read_text()
    n_images = len(parse_html(text).images)
    files = {img["data-file"] for img in parse_html(text).images}
    # all of Figures 1-6 and both GIF animations are in the page
    for name in ("fig1_gini_m20.png", "fig2_examples.png", "fig3_church_isomap.png", "fig4_isomap3d.png",
                 "fig5_church_windows.png", "fig6_distances.png", "isomap3d_regular.gif", "isomap3d_mmd.gif"):
        assert any(f.endswith(name) for f in files), name

    result = chromium(["--virtual-time-budget=10000", "--run-all-compositor-stages-before-draw", "--dump-dom",
                       report.as_uri()], tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = parse_html(result.stdout)
    assert dom.body_attrs.get("data-images-rendered") == f"{n_images}/{n_images}", dom.body_attrs
    assert len(dom.images) == n_images
    for img in dom.images:
        assert img.get("data-rendered") == "yes", img.get("data-file")
        assert int(img.get("data-natural-width", "0")) > 0, img.get("data-file")
    # the tables are there, with rows
    for table in ("table_findings", "table2", "table3", "table4", "table5", "table_attack", "table_timings",
                  "table_versions"):
        assert dom.tables.get(table), table
    assert len(dom.tables["table4"]) == 8 and len(dom.tables["table5"]) == 4
    # the verdict column: the word first, then "— one trained model; see deepadv study" (one seed)
    assert {row[5].split()[0] for row in dom.tables["table_findings"]} <= {"held", "contradicted", "inconclusive"}


def test_screenshot_is_not_blank(report, tmp_path):
    from PIL import Image, ImageStat

    require_chromium()
    shot = tmp_path / "report.png"
    result = chromium(["--virtual-time-budget=10000", "--window-size=1200,2400", f"--screenshot={shot}",
                       report.as_uri()], tmp_path / "profile")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1200, 2400)
        gray = im.convert("L")
        stat = ImageStat.Stat(gray)
        assert stat.stddev[0] > 10  # text, tables and figures, not an empty page
        # the top of the page shows the title (dark pixels in the first 100 rows)
        top = gray.crop((0, 0, 1200, 100))
        assert min(top.getdata()) < 80


def test_missing_chromium_fails_under_ci(monkeypatch):
    """The rule above, checked: no Chromium + CI=true is a failure, not a skip."""
    monkeypatch.setitem(globals(), "CHROMIUM", None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_chromium()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="CI=true makes this a failure"):
        require_chromium()
