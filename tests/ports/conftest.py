"""Known gaps: port tests that fail against the current harness, each with the reason.

Each entry turns one test into a strict xfail: it must keep failing for the stated reason, and
the run fails (XPASS) as soon as the harness closes the gap -- then delete the entry.
"""

from pathlib import Path

import pytest

HERE = Path(__file__).parent

KNOWN_GAPS: dict[str, str] = {
    'test_map_is_verified_by_running_both_models[regnet_tv_hf]':
        'torchvision runs the RegNet shortcut before the main branch; same-shape 1x1 convs (proj, f.a, f.c) stay permuted in block2-0',
    'test_transferred_port_passes_in_float64[regnet_tv_hf]':
        'RegNet shortcut/main-branch order: block2-0 map still permuted',
    'test_injected_bug_is_blamed_on_exactly_the_changed_module[regnet_tv_hf-act]':
        'RegNet shortcut/main-branch order: block2-0 map still permuted',
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = KNOWN_GAPS.get(item.name) if Path(item.path).parent == HERE else None
        if reason is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
