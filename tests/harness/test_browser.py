"""The report pages as a browser shows them: headless Chromium renders index, a failing pair page and
the dashboard at 1400 px; the tests read the laid-out DOM (table rows, plot size, links, page width)
and a screenshot of each page is saved under reports/screenshots/.

Chromium is Debian's ``chromium`` package (.ci/run installs it). Without it these tests skip, unless
PARITY_BROWSER=required (set by .ci/run), where they fail.
"""

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import harness
from harness import runs
from harness.pages import render
from harness.report import document
from harness_toys import TOY, drop_residual

# one worker renders and screenshots the pages once for all these tests (tox runs -n 2 --dist loadgroup)
pytestmark = pytest.mark.xdist_group("browser")

WIDTH, HEIGHT = 1400, 1000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--window-size={WIDTH},{HEIGHT}"]

# Appended to a copy of each page: records what the laid-out page shows in a data attribute that
# --dump-dom prints. The pages themselves carry no script.
PROBE = """<script>
const box = (el) => el ? [el.getBoundingClientRect().width, el.getBoundingClientRect().height] : null;
document.body.dataset.probe = JSON.stringify({
  scrollWidth: document.documentElement.scrollWidth,
  rows: Object.fromEntries(["pass", "fail", "error"].map(s => [s, document.querySelectorAll("tr." + s).length])),
  layerRows: document.querySelectorAll("table.layers tbody tr").length,
  plot: box(document.querySelector("svg.plot")),
  culprit: box(document.querySelector("svg.plot circle.culprit")),
  tolerance: box(document.querySelector("svg.plot line.tolerance")),
  sparks: document.querySelectorAll("svg.spark").length,
  regressions: document.querySelectorAll("svg.spark circle.regression").length,
  links: [...document.querySelectorAll("a[href]")].map(a => a.getAttribute("href")),
});
</script>"""


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    message = "no Chromium: install Debian's chromium package (apt-get install chromium; .ci/run does it)"
    if os.environ.get("PARITY_BROWSER") == "required":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _report(directory: Path) -> dict:
    """A report of two runs: the second breaks a block (a regression) and has a test that raised."""
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    passing = dict(harness.compare_pair(TOY, dtype=torch.float64).to_dict(), test="tests/test_toy.py::test_toy[float64]")
    clean32 = dict(harness.compare_pair(TOY, dtype=torch.float32).to_dict(), test="tests/test_toy.py::test_toy[float32]")
    failing = dict(harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64).to_dict(),
                   test="tests/test_toy.py::test_toy_edit")
    error = {"test": "tests/test_toy.py::test_toy_raises", "pair": "toy_mlp", "dtype": "float32", "passed": False,
             "status": "error", "error": {"type": "RuntimeError", "message": "boom in blocks.0", "traceback": "..."}}
    first = runs.run_stamp(commit="1111111", selection="-k parity", why_partial=["-k parity"])
    first["time"] = "2026-01-01T02:17:00Z"
    second = runs.run_stamp(commit="2222222", selection="")
    before = [passing, clean32, dict(passing, test=failing["test"])]
    after = [passing, clean32, failing, error]
    doc = document([dict(r, run=second) for r in after])
    doc["runs"] = [second]
    history = [runs.history_entry(first, before), runs.history_entry(second, after)]
    render(directory, doc, history)
    return doc


def _show(browser: str, page: Path, screenshot: Path, profile: Path) -> dict:
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        out = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert found, f"Chromium printed no probed page (exit {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def shown(tmp_path_factory, request):
    browser = _browser()
    directory = tmp_path_factory.mktemp("reports")
    doc = _report(directory)
    shots = Path(request.config.rootpath) / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    pages = {"index": directory / "index.html", "pair": directory / "pairs" / "toy_mlp-float64.html",
             "dashboard": directory / "dashboard.html"}
    probes = {name: _show(browser, page, shots / f"{name}.png", tmp_path_factory.mktemp(f"profile-{name}"))
              for name, page in pages.items()}
    return {"doc": doc, "dir": directory, "pages": pages, "probes": probes, "shots": shots}


@pytest.mark.parametrize("name", ["index", "pair", "dashboard"])
def test_page_fits_a_1400_pixel_window(shown, name):
    assert shown["probes"][name]["scrollWidth"] <= WIDTH, f"{name} is {shown['probes'][name]['scrollWidth']} px wide"


@pytest.mark.parametrize("name", ["index", "pair", "dashboard"])
def test_every_link_on_the_page_opens_a_file(shown, name):
    page = shown["pages"][name]
    links = shown["probes"][name]["links"]
    assert links, f"{name} has no links"
    missing = [h for h in links if not (page.parent / h).is_file()]
    assert not missing, f"{name} links to missing files: {missing}"


def test_index_table_shows_each_result_once(shown):
    assert shown["probes"]["index"]["rows"] == {"pass": 2, "fail": 1, "error": 1}


def test_index_links_every_row_to_its_pair_page(shown):
    pair_links = {h for h in shown["probes"]["index"]["links"] if h.startswith("pairs/")}
    assert pair_links == {"pairs/toy_mlp-float64.html", "pairs/toy_mlp-float32.html"}


def test_pair_page_draws_the_error_plot_with_tolerance_and_culprit(shown):
    probe = shown["probes"]["pair"]
    assert probe["plot"][0] > 800 and probe["plot"][1] > 150, f"plot laid out at {probe['plot']}"
    assert probe["culprit"] and probe["culprit"][0] > 0 and probe["tolerance"][0] > 0


def test_pair_page_table_has_a_row_per_aligned_call(shown):
    failing = next(r for r in shown["doc"]["results"] if runs.status(r) == "fail")
    # the page holds the passing and the failing float64 results: one table each
    assert shown["probes"]["pair"]["layerRows"] == 2 * len(failing["layers"])


def test_dashboard_plots_error_and_time_per_result_and_rings_the_regression(shown):
    probe = shown["probes"]["dashboard"]
    assert probe["sparks"] == 2 * 4 and probe["regressions"] == 1


@pytest.mark.parametrize("name", ["index", "pair", "dashboard"])
def test_screenshot_is_saved_and_shows_the_page(shown, name):
    import numpy as np
    from PIL import Image

    image = Image.open(shown["shots"] / f"{name}.png").convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    pixels = np.asarray(image).astype(int)
    red = int(((pixels[..., 0] > 180) & (pixels[..., 1] < 70) & (pixels[..., 2] < 70)).sum())
    assert red > 50, f"{name}.png shows no failure marking (red pixels: {red}); is the page blank?"
