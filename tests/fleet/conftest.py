"""Fixtures the fleet modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from create_runs import Cluster, cluster_of_one_test


@pytest.fixture
def cluster(tmp_path: Path, node_image: str) -> Iterator[Cluster]:
    """A create/resume test's own dynia home and cluster name; what it made goes after it."""
    with cluster_of_one_test(tmp_path) as made:
        yield made
