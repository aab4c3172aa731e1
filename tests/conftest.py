"""Shared pytest configuration: fixture plugins live beside this file.

The test command runs the layers with pytest-xdist workers. A test that shares a module-scoped
fixture (one cluster for the whole module) runs on the same worker as the rest of its module, so
the cluster is built once; every other test is free to run on any worker.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["fleet_fixtures", "ansible_fixtures"]

SHARED_SCOPES = frozenset({"module", "class", "package"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixture_info = getattr(item, "_fixtureinfo", None)
        if fixture_info is None:
            continue
        shared = any(
            definitions[-1].scope in SHARED_SCOPES
            for definitions in fixture_info.name2fixturedefs.values()
            if definitions
        )
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
