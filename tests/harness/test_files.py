"""No debris: a killed write's temporaries are removed by the next write of the same file, and while
they exist they sit where nobody takes them for results."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from candidates.io import save_state_dict
from harness import files, golden
from harness.files import TMP_DIR, atomic_write, temporaries
from harness.files import atomic_write_text

# Loads harness/files.py alone (it imports nothing from the package), so the writer starts in a blink.
_KILLED_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[2])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
atomic_write = files.atomic_write

def write(tmp):
    tmp.write_bytes(b"x" * 2_000_000)
    print("writing", flush=True)
    time.sleep(120)

atomic_write(sys.argv[1], write)
"""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _temporary(target, pid: int, host: str = files._HOST):
    folder = target.parent / TMP_DIR
    folder.mkdir(exist_ok=True)
    tmp = folder / f"{target.name}.{host}.{pid}.0123abcd.tmp"
    tmp.write_bytes(b"partial")
    return tmp


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "parity.json"
    target.write_text("old")
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), files.__file__],
                              stdout=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert writer.stdout.readline().strip() == b"writing", "the writer did not start"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    (left,) = temporaries(target)
    assert target.read_text() == "old" and left.stat().st_size == 2_000_000
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and temporaries(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.json"], "debris left beside the report"


def test_temporaries_are_in_a_hidden_folder_no_result_glob_matches(tmp_path):
    seen = {}

    def write(tmp):
        tmp.write_text("{}")
        seen["tmp"] = tmp
        seen["json"] = sorted(p.name for p in tmp_path.glob("*.json"))
        seen["listing"] = sorted(p.name for p in tmp_path.iterdir())

    atomic_write(tmp_path / "a.json", write)
    assert seen["tmp"].parent == tmp_path / TMP_DIR and not seen["tmp"].name.endswith(".json")
    assert seen["json"] == [] and seen["listing"] == [TMP_DIR], seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"], "the temporaries' folder was left behind"


def test_a_temporary_of_a_dead_writer_on_this_host_is_removed_at_once(tmp_path):
    target = tmp_path / "g.json"
    stale = _temporary(target, _dead_pid())
    golden.write(target, {"a": 1})
    assert not stale.exists() and not (tmp_path / TMP_DIR).exists()


def test_a_temporary_of_a_running_writer_is_kept(tmp_path):
    target = tmp_path / "g.json"
    live = _temporary(target, os.getpid())
    atomic_write_text(target, "x")
    assert live.exists(), "a write in progress lost its temporary"


def test_another_hosts_temporary_is_kept_until_it_is_old(tmp_path):
    target = tmp_path / "g.json"
    theirs = _temporary(target, _dead_pid(), host="ffffffff")
    atomic_write_text(target, "x")
    assert theirs.exists(), "a temporary of another host's writer was removed while it may still be writing"
    hours_ago = time.time() - 2 * files.STALE_AFTER
    os.utime(theirs, (hours_ago, hours_ago))
    atomic_write_text(target, "y")
    assert not theirs.exists()


def test_temporaries_of_the_older_form_beside_the_target_are_removed_once_old(tmp_path):
    target = tmp_path / "parity.json"
    old = tmp_path / f".parity.json.{'a' * 32}.tmp"
    recent = tmp_path / f".parity.json.{'b' * 32}.tmp"
    for tmp in (old, recent):
        tmp.write_bytes(b"partial")
    hours_ago = time.time() - 2 * files.STALE_AFTER
    os.utime(old, (hours_ago, hours_ago))
    atomic_write_text(target, "x")
    assert not old.exists() and recent.exists()


def test_only_temporaries_of_the_same_target_are_touched(tmp_path):
    dead = _dead_pid()
    other = _temporary(tmp_path / "other.json", dead)
    prefix = _temporary(tmp_path / "g.json.bak", dead)  # a name that merely starts like the target's
    atomic_write_text(tmp_path / "g.json", "x")
    assert other.exists() and prefix.exists()


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_checkpoint_writes_clean_their_stale_temporaries_too(tmp_path, name):
    target = tmp_path / name
    stale = _temporary(target, _dead_pid())
    save_state_dict({"w": torch.ones(2)}, target)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_write_that_fails_leaves_neither_temporary_nor_folder(tmp_path):
    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(tmp_path / "a.json", fail)
    assert list(tmp_path.iterdir()) == []
