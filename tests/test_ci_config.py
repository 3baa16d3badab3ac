"""The nightly workflow and the tox modes, read as configuration: what CI and `tox -e MODE` will run."""

import configparser
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"


def _workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def _runs(job):
    return [step.get("run", "") for step in job["steps"]]


def _uses(job):
    return [step.get("uses", "").split("@")[0] for step in job["steps"]]


def test_nightly_workflow_is_scheduled():
    doc = _workflow()
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers


def test_every_matrix_shard_runs_its_slice_of_the_nightly_suite():
    job = _workflow()["jobs"]["shard"]
    shards = job["strategy"]["matrix"]["shard"]
    command = next(r for r in _runs(job) if "tox -e nightly" in r)
    total = int(re.search(r"--shard \$\{\{ matrix\.shard \}\}/(\d+)", command).group(1))
    assert sorted(shards) == list(range(1, total + 1)), f"matrix {shards} does not cover shards 1..{total}"
    assert job["strategy"]["fail-fast"] is False, "one failing shard must not cancel the others"


def test_each_shard_uploads_its_report_even_when_tests_fail():
    job = _workflow()["jobs"]["shard"]
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    command = next(r for r in _runs(job) if "tox -e nightly" in r)
    report_dir = re.search(r"--report-dir (.+)$", command.strip()).group(1)
    assert upload["if"] == "always()" and upload["with"]["path"] == f"{report_dir}/parity.json"


def test_publish_job_merges_the_shards_and_uploads_pages_and_dashboard():
    jobs = _workflow()["jobs"]
    publish = jobs["publish"]
    assert publish["needs"] == "shard" and publish["if"] == "always()"
    assert "actions/download-artifact" in _uses(publish)
    assert any("python -m harness report merge shards/*/parity.json --out reports" in r for r in _runs(publish))
    upload = [s for s in publish["steps"] if s.get("uses", "").startswith("actions/upload-artifact")][-1]
    for page in ("reports/index.html", "reports/dashboard.html", "reports/pairs/"):
        assert page in upload["with"]["path"], f"the published artifact lacks {page}"


def test_publish_job_keeps_the_history_between_nights():
    steps = _workflow()["jobs"]["publish"]["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    restore, merge, save = (uses.index("actions/cache/restore"),
                            next(i for i, s in enumerate(steps) if "report merge" in s.get("run", "")),
                            uses.index("actions/cache/save"))
    assert restore < merge < save and steps[restore]["with"]["path"] == "reports/history.jsonl"


def _tox():
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    return config


def test_tox_modes_run_in_the_one_test_environment():
    config = _tox()
    for mode in ("parity", "nightly", "bench"):
        section = config[f"testenv:{mode}"]
        assert (section["runner"], section["env_dir"], section["base_python"]) == ("mode", "{work_dir}{/}py311", "py311"), \
            f"tox -e {mode} would build its own environment"
    assert "def id() -> str:\n        return \"mode\"" in (ROOT / "toxfile.py").read_text(), "toxfile.py registers the mode runner"


def test_tox_modes_run_what_their_names_say():
    config = _tox()
    assert "-k parity --report" in config["testenv:parity"]["commands"]
    assert "--nightly --report" in config["testenv:nightly"]["commands"]
    assert "-m bench --benchmark-only" in config["testenv:bench"]["commands"]


def test_tox_keeps_the_pytest_cache_so_last_failed_works():
    config = _tox()
    commands = [config[s]["commands"] for s in config.sections() if "commands" in config[s]]
    assert not any("no:cacheprovider" in c for c in commands), "--lf needs pytest's cache provider"
