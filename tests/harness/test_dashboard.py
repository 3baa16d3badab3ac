"""The dashboard: a run history's regressions (newly failing, errors grown tenfold) and partial runs."""

from harness import runs
from harness.dashboard import dashboard_html
from report_toys import stamp


def test_dashboard_flags_a_newly_failing_result(passing, failing):
    history = [runs.history_entry(stamp(time="2026-01-01T00:00:00Z"), [dict(passing, test="t")]),
               runs.history_entry(stamp(time="2026-01-02T00:00:00Z"), [dict(failing, test="t")])]
    page = dashboard_html(history)
    assert "Regressions (1)" in page and "newly failing" in page


def _history_of_passing_errors(passing, *rel_l2s):
    """A history of nightly runs in which the toy pair passes with these output errors, one per night."""
    results = [dict(passing, test="t", output=dict(passing["output"], rel_l2=e)) for e in rel_l2s]
    return [runs.history_entry(stamp(time=f"2026-01-0{i}T00:00:00Z"), [r]) for i, r in enumerate(results, 1)]


def test_dashboard_flags_an_error_grown_tenfold_while_passing(passing):
    assert "output error grew 20x while passing" in dashboard_html(_history_of_passing_errors(passing, 1e-12, 2e-11))


def test_dashboard_does_not_flag_growth_below_tenfold(passing):
    assert "Regressions (0)" in dashboard_html(_history_of_passing_errors(passing, 1e-12, 9e-12))


def test_dashboard_marks_partial_runs(passing):
    run = stamp(time="2026-01-01T00:00:00Z", why_partial=["-k toy"])
    page = dashboard_html([runs.history_entry(run, [dict(passing, test="t")])])
    assert "partial</span> -k toy" in page and 'fill="#fff"' in page, "partial runs are labelled and their points hollow"
