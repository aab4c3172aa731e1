"""Shared pytest configuration: the fixture plugins beside this file, the slow modules' order."""

from __future__ import annotations

import pytest

pytest_plugins = ["fleet_fixtures", "ansible_fixtures"]

# The slow modules, longest first. With `--dist loadscope --no-loadscope-reorder` pytest-xdist
# hands whole modules to its workers in collection order: the long ones start at once and the
# short ones fill in at the end, so no worker is left alone with a long module. A module not
# listed runs after these.
LONGEST_FIRST = [
    "e2e/test_lifecycle_e2e.py",
    "fleet/test_create_resume.py",
    "e2e/test_lifecycle_digitalocean_e2e.py",
    "fleet/test_molecule.py",
    "e2e/test_faults_e2e.py",
    "fleet/test_playbooks.py",
    "fleet/test_create_resume_faults.py",
    "fleet/test_playbooks_lifecycle.py",
    "e2e/test_origin_ca_e2e.py",
    "fleet/test_local_image.py",
]


def _rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    for rank, module in enumerate(LONGEST_FIRST):
        if path.endswith(f"tests/{module}"):
            return rank
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: the tests of a module keep their file order.
    items.sort(key=_rank)
