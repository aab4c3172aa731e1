"""`--batch`: how many nodes a roll changes at once, and the input it refuses.

The plan is Ansible's `serial` list: a one-node canary first, then batches that always leave a
node serving. Bad input is refused by deploy, sync and repair before any node is touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_invoke import run_dynia
from sample_state import WEB_COMPOSE, save_sample
from test_bad_input import refused, snapshot

from dynia.errors import UsageError
from dynia.operations.rollout import BatchSize, batch_plan, batch_vars, parse_batch


def batches(plan: list[int], nodes: int) -> list[int]:
    """The batch sizes Ansible makes of ``nodes`` hosts with ``serial: plan``."""
    sizes, left, index = [], nodes, 0
    while left > 0:
        size = min(plan[min(index, len(plan) - 1)], left)
        sizes.append(size)
        left -= size
        index += 1
    return sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", BatchSize(count=1)),
        ("2", BatchSize(count=2)),
        (" 3 ", BatchSize(count=3)),
        ("25%", BatchSize(percent=25)),
        ("99%", BatchSize(percent=99)),
    ],
)
def test_batch_takes_a_count_or_a_percentage(text: str, expected: BatchSize) -> None:
    assert parse_batch(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0", "at least 1"),
        ("-1", "at least 1"),
        ("-3", "at least 1"),
        ("0%", "between 1% and 99%"),
        ("100%", "between 1% and 99%"),
        ("150%", "between 1% and 99%"),
        ("-5%", "between 1% and 99%"),
        ("", "a number of nodes or a percentage"),
        ("two", "a number of nodes or a percentage"),
        ("1.5", "a number of nodes or a percentage"),
        ("2%%", "a number of nodes or a percentage"),
        ("%", "a number of nodes or a percentage"),
        ("2,3", "a number of nodes or a percentage"),
    ],
)
def test_bad_batch_text_is_refused_with_a_hint(text: str, words: str) -> None:
    with pytest.raises(UsageError) as refusal:
        parse_batch(text)
    assert words in refusal.value.message
    assert refusal.value.hint and "--batch 25%" in refusal.value.hint


def test_one_at_a_time_is_plain_serial_and_adds_no_extra_vars() -> None:
    for nodes in (1, 2, 6):
        assert batch_plan(BatchSize(), nodes) == [1]
        assert batch_vars(BatchSize(), nodes) == {}


@pytest.mark.parametrize(
    ("batch", "nodes", "expected"),
    [
        (BatchSize(count=2), 4, [1, 2, 1]),
        (BatchSize(count=2), 3, [1, 2]),
        (BatchSize(count=3), 9, [1, 3, 3, 2]),
        (BatchSize(percent=50), 4, [1, 2, 1]),
        (BatchSize(percent=25), 4, [1, 1, 1, 1]),  # a quarter of 4 is one node
        (BatchSize(percent=10), 4, [1, 1, 1, 1]),  # less than one node rounds up to one
        (BatchSize(percent=99), 6, [1, 5]),  # 5.94 rounds down: one node keeps serving
        (BatchSize(percent=34), 9, [1, 3, 3, 2]),
    ],
)
def test_first_batch_is_a_canary_and_no_batch_exceeds_the_size(
    batch: BatchSize, nodes: int, expected: list[int]
) -> None:
    plan = batch_plan(batch, nodes)
    assert batches(plan, nodes) == expected
    assert batch_vars(batch, nodes) == ({"dynia_sync_serial": plan} if plan != [1] else {})


@pytest.mark.parametrize("nodes", range(2, 12))
@pytest.mark.parametrize("size", range(1, 12))
def test_every_batch_leaves_a_node_serving_and_the_master_with_a_synced_backup(
    nodes: int, size: int
) -> None:
    """sync.yml orders the backups first and the MASTER last: its batch never holds every node."""
    if size >= nodes and size > 1:
        with pytest.raises(UsageError):
            batch_plan(BatchSize(count=size), nodes)
        return
    sizes = batches(batch_plan(BatchSize(count=size), nodes), nodes)
    assert sizes[0] == 1
    assert max(sizes) <= size
    assert all(nodes - s >= max(1, nodes - size) for s in sizes)
    # The last batch, the MASTER's, never includes the canary: a backup already synced serves.
    assert sum(sizes[:-1]) >= 1


@pytest.mark.parametrize(
    ("batch", "nodes"),
    [(BatchSize(count=3), 3), (BatchSize(count=4), 3), (BatchSize(count=2), 2)],
)
def test_a_batch_as_large_as_the_cluster_is_refused(batch: BatchSize, nodes: int) -> None:
    with pytest.raises(UsageError) as refusal:
        batch_plan(batch, nodes)
    assert "no node would be left serving" in refusal.value.message
    assert (
        refusal.value.hint == f"use a batch of at most {nodes - 1} node(s), or a smaller percentage"
    )


def test_one_node_at_a_time_stays_allowed_on_a_one_node_cluster() -> None:
    assert batch_plan(BatchSize(count=1), 1) == [1]
    assert batch_plan(BatchSize(percent=50), 1) == [1]


@pytest.fixture
def sample_home(tmp_path: Path) -> Path:
    """A home with a serving 3-node cluster and its deploy-config."""
    home = tmp_path / "home"
    save_sample(home)
    assert run_dynia(home, "render", "--no-validate").exit_code == 0
    return home


COMMANDS = {
    "sync": ["sync"],
    "repair": ["repair", "--force"],
    "deploy": ["deploy", "--name", "web", "--compose", "{compose}"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("batch", "words"),
    [
        ("0", ["--batch must be at least 1"]),
        ("-2", ["--batch must be at least 1"]),
        ("abc", ["--batch must be a number of nodes or a percentage", "'abc'"]),
        ("100%", ["between 1% and 99%"]),
        ("3", ["--batch 3 is 3 of the cluster's 3 node(s)", "at most 2 node(s)"]),
        ("7", ["--batch 7 is 7 of the cluster's 3 node(s)"]),
    ],
)
def test_bad_batch_is_refused_before_any_node_is_touched(
    sample_home: Path, tmp_path: Path, command: str, batch: str, words: list[str]
) -> None:
    compose = tmp_path / "web.yml"
    compose.write_text(WEB_COMPOSE)
    args = [arg.format(compose=compose) for arg in COMMANDS[command]]
    before = snapshot(sample_home)
    done = run_dynia(sample_home, *args, "--batch", batch)
    refused(done, *words)
    assert done.exit_code == 2
    assert snapshot(sample_home) == before
