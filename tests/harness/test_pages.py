"""Report pages: the index and the pair pages, rendered from report JSON of real toy comparisons."""

import re
from html import unescape
from html.parser import HTMLParser

import torch

import harness
from harness.pages import error_plot, fmt_cosine, fmt_num, index_html, pair_html, pair_page_name, render
from harness.report import document


ERROR = {"pair": "toy_mlp", "dtype": "float32", "passed": False, "status": "error",
         "error": {"type": "RuntimeError", "message": "shapes cannot be multiplied (10x8 and 9x16)", "traceback": "..."}}


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])


def test_cosine_is_printed_as_its_distance_from_one():
    assert fmt_cosine(1.0000000000000002) == "1", "rounding above 1 must read as 1"
    assert fmt_cosine(0.9999999999999998) == "1 − 2.22e-16"
    assert fmt_cosine(0.91317357) == "0.9132"
    assert fmt_cosine("nan") == "nan"


def test_numbers_have_three_significant_digits():
    assert [fmt_num(v) for v in (0.0, 1e-9, 1.234e-4, 3.2123e-7, 0.58437, 12345.6, "inf", None)] == \
        ["0", "1e-9", "1.23e-4", "3.21e-7", "0.584", "1.23e4", "inf", "–"]


def test_index_lists_failures_and_errors_before_passes(passing, failing):
    doc = document([dict(passing, test="a"), dict(failing, test="b"), dict(ERROR, test="c")])
    page = index_html(doc)
    assert page.index("culprit: <code>blocks.1</code>") < page.index("raise: <code>RuntimeError") < page.index("Passing (1)")
    assert "1 of 3 comparisons pass" in page


def test_index_groups_failures_sharing_a_culprit(failing):
    doc = document([dict(failing, test="b1"), dict(failing, test="b2", dtype="float32")])
    page = index_html(doc)
    assert page.count('<div class="group') == 1 and "2 comparisons" in page, "one group for one culprit"


def test_every_index_row_links_to_its_pair_page(tmp_path, passing, failing):
    doc = document([dict(passing, test="a"), dict(failing, test="b", dtype="float32"), dict(ERROR, test="c")])
    render(tmp_path, doc)
    parser = Links()
    parser.feed((tmp_path / "index.html").read_text())
    pair_links = [h for h in parser.hrefs if h.startswith("pairs/")]
    assert sorted(pair_links) == ["pairs/toy_mlp-float32.html", "pairs/toy_mlp-float32.html", "pairs/toy_mlp-float64.html"]
    assert all((tmp_path / h).is_file() for h in pair_links), "every link points to a written page"


def test_pair_page_names_are_safe_file_names():
    assert pair_page_name("a/b c", "float64") == "a_b_c-float64.html"
    assert pair_page_name(None, None) == "comparison-unknown.html"


def test_error_plot_marks_tolerance_first_divergence_and_culprit(failing):
    svg = error_plot(failing)
    assert svg.startswith("<svg") and 'class="tolerance"' in svg
    assert "first divergence: blocks.1" in svg and "culprit: blocks.1" in svg
    assert svg.count('class="layer ') == len(failing["layers"]), "one point per aligned call"


def test_error_plot_puts_larger_errors_higher(failing):
    svg = error_plot(failing)
    ys = {m.group(1): float(m.group(2)) for m in re.finditer(r'class="layer (\w+)" cx="[\d.]+" cy="([\d.]+)"', svg)}
    assert ys["introduced"] < ys["ok"], "SVG y grows downwards: a failing call sits above an exact one"


def test_pair_page_shows_verdict_table_legend_calls_and_command(failing):
    page = unescape(pair_html([dict(failing, test="tests/t.py::test_broken")], {}))
    for expected in ("FAIL", "<svg", "introduces the error", "propagated", "Unmatched calls", "Pass-through calls",
                     "pytest 'tests/t.py::test_broken'", "python -m harness compare toy_mlp --dtype float64"):
        assert expected in page, f"the pair page lacks {expected!r}"


def test_pair_page_shows_the_diagnosis_when_the_json_has_one(failing):
    finding = {"module": "blocks.1", "kind": "missing_op", "op": "add", "text": "blocks.1: add missing in the candidate"}
    page = pair_html([dict(failing, diagnosis=[finding])], {})
    assert "Diagnosis" in page and "blocks.1: add missing in the candidate" in page


def test_pair_page_of_an_error_shows_the_exception():
    page = pair_html([dict(ERROR, test="t.py::test_raises")], {})
    assert "ERROR" in page and "RuntimeError: shapes cannot be multiplied" in page and "<svg" not in page


def test_pages_are_self_contained(tmp_path, passing, failing):
    render(tmp_path, document([dict(passing, test="a"), dict(failing, test="b")]))
    for page in tmp_path.rglob("*.html"):
        text = page.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text) and "<script" not in text, f"{page} loads from the network"


def test_pair_page_shows_the_backward_comparison():
    model = torch.nn.Linear(3, 2).double()
    result = harness.compare(model, model, torch.ones(1, 3, dtype=torch.float64), backward=True,
                             pair_name="toy_linear").to_dict()
    page = unescape(pair_html([result], {}))
    assert "<h3>Backward" in page and "parameter gradient (worst first)" in page and "<code>weight</code>" in page
