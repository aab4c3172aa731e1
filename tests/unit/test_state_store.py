"""The state store on a real filesystem with real processes: atomic saves, backups, the lock,
concurrent writers, writers killed mid-save, and files that must never be written over."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynia.errors import LockTimeoutError, StateError
from dynia.paths import HomeLayout
from dynia.state import BACKUPS_KEPT, SCHEMA_VERSION, LockHolder, State, StateStore, serialize
from dynia.state.lock import StateLock
from dynia.state.models import Cluster, Route, Service

# Holds the lock as `argv[2]` until its stdin closes; then adds cluster "held" and saves.
HOLDER = """
import sys
from pathlib import Path
from dynia.state import StateStore
from dynia.state.models import Cluster
with StateStore(Path(sys.argv[1])).transaction(sys.argv[2]) as txn:
    print("locked", flush=True)
    sys.stdin.read()
    txn.state.clusters["held"] = Cluster("held", "local", "local", "lab", "small", 1)
"""

# One read-modify-write adding cluster argv[2]; the pause widens the window a lost update needs.
ADDER = """
import sys, time
from pathlib import Path
from dynia.state import StateStore
from dynia.state.models import Cluster
name = sys.argv[2]
with StateStore(Path(sys.argv[1]), lock_timeout=120).transaction("test add " + name) as txn:
    time.sleep(0.02)
    txn.state.clusters[name] = Cluster(name, "local", "local", "lab", "small", 1)
"""

# Saves a ~3 MB state over and over inside one transaction; every version says which it is.
WRITER = """
import os, sys
from pathlib import Path
from dynia.state import StateStore
from dynia.state.models import Cluster, Service
blob = os.urandom(1_500_000).hex()
with StateStore(Path(sys.argv[1]), lock_timeout=30).transaction("test writer") as txn:
    cluster = txn.state.clusters.setdefault(
        "big", Cluster("big", "local", "local", "lab", "small", 1))
    print("writing", flush=True)
    i = int(sys.argv[2])
    while True:
        i += 1
        cluster.completed_steps = ["save-" + str(i)]
        cluster.services["web"] = Service(
            "web", "# " + str(i) + "\\n" + blob, str(i), 20000, 80, "web")
        txn.save()
"""


def cluster(name: str) -> Cluster:
    return Cluster(name, "local", "local", "lab-1", "small", 1)


def spawn(script: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "dynia-home"


def test_load_without_a_file_is_empty_and_creates_nothing(home: Path) -> None:
    assert StateStore(home).load() == State()
    assert not home.exists()


def test_transaction_writes_sorted_private_json_in_a_private_home(home: Path) -> None:
    store = StateStore(home)
    with store.transaction("dynia cluster create") as txn:
        txn.state.clusters["prod"] = cluster("prod")
        txn.state.current_cluster = "prod"
    path = HomeLayout(home).state_file
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert store.load().current_cluster == "prod"
    # The holder record lives only as long as the lock.
    assert store.lock_path.read_bytes() == b""


def test_a_file_made_world_readable_is_private_again_after_the_next_save(home: Path) -> None:
    store = StateStore(home)
    with store.transaction("t") as txn:
        txn.state.clusters["alpha"] = cluster("alpha")
    store.path.chmod(0o644)
    with store.transaction("t") as txn:
        txn.state.clusters["beta"] = cluster("beta")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_checkpoints_stay_and_an_exception_saves_nothing_more(home: Path) -> None:
    store = StateStore(home)
    with pytest.raises(RuntimeError), store.transaction("dynia cluster create") as txn:
        txn.state.clusters["prod"] = cluster("prod")
        txn.state.clusters["prod"].mark_step("nodes")
        txn.save()
        assert store.load().clusters["prod"].completed_steps == ["nodes"]
        txn.state.clusters["prod"].mark_step("reserved-ip")
        txn.state.clusters["other"] = cluster("other")
        raise RuntimeError("provider failed")
    state = store.load()
    assert list(state.clusters) == ["prod"]
    assert state.clusters["prod"].completed_steps == ["nodes"]


def test_saving_after_the_block_is_refused(home: Path) -> None:
    store = StateStore(home)
    with store.transaction("t") as txn:
        pass
    with pytest.raises(StateError, match="already over"):
        txn.save()


def test_a_nested_transaction_fails_at_once_instead_of_waiting_on_itself(home: Path) -> None:
    store = StateStore(home, lock_timeout=5)
    start = time.monotonic()
    inner = StateStore(home).transaction("inner")
    with store.transaction("outer"), pytest.raises(StateError, match="already held"), inner:
        pytest.fail("entered a transaction nested in another")
    assert time.monotonic() - start < 1


def test_ten_previous_versions_are_kept_and_no_op_saves_keep_them_as_they_are(home: Path) -> None:
    store = StateStore(home)
    versions = []
    for i in range(15):
        with store.transaction("t") as txn:
            txn.state.clusters[f"c{i:02d}"] = cluster(f"c{i:02d}")
        versions.append(store.path.read_bytes())
    backups = store.backups()
    assert [p.name for p in backups] == [f"state.json.{n}" for n in range(1, BACKUPS_KEPT + 1)]
    assert backups[0].parent == HomeLayout(home).backups_dir
    assert [p.read_bytes() for p in backups] == versions[-2:-12:-1]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in backups)

    before = {p: p.stat().st_mtime_ns for p in [store.path, *backups]}
    inode = store.path.stat().st_ino
    for _ in range(3):
        with store.transaction("t") as txn:
            txn.save()
    assert {p: p.stat().st_mtime_ns for p in [store.path, *backups]} == before
    assert store.path.stat().st_ino == inode


def test_invalid_json_is_reported_with_line_and_column_and_never_written_over(home: Path) -> None:
    store = StateStore(home)
    home.mkdir()
    broken = b'{\n  "schema_version": 1,\n  "clusters": {,\n}\n'
    store.path.write_bytes(broken)
    entered = False
    with pytest.raises(StateError) as caught, store.transaction("dynia context use") as txn:
        entered = True
        txn.state.current_cluster = None
    assert not entered
    error = caught.value
    assert str(store.path) in error.message
    assert "line 3, column 16" in error.message
    assert "move it aside" in (error.hint or "")
    assert store.path.read_bytes() == broken
    assert store.backups() == []
    with pytest.raises(StateError, match="line 3, column 16"):
        store.load()


def test_a_hand_broken_file_points_at_the_newest_backup(home: Path) -> None:
    store = StateStore(home)
    for name in ("alpha", "beta"):
        with store.transaction("t") as txn:
            txn.state.clusters[name] = cluster(name)
    data = json.loads(store.path.read_text())
    data["clusters"]["beta"]["planned_nodes"] = "three"
    store.path.write_text(json.dumps(data))
    mtime = store.path.stat().st_mtime_ns
    with pytest.raises(StateError) as caught, store.transaction("t"):
        pass
    assert "clusters.beta.planned_nodes: expected an integer, found a string 'three'" in str(
        caught.value
    )
    backup = HomeLayout(home).backups_dir / "state.json.1"
    assert f"cp {backup} {store.path}" in (caught.value.hint or "")
    assert store.path.stat().st_mtime_ns == mtime
    # Following the hint restores a working state.
    store.path.write_bytes(backup.read_bytes())
    assert list(store.load().clusters) == ["alpha"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the file is empty"),
        (b"[1, 2]", "expected a JSON object, found list"),
        (b'{"schema_version": 1, "clusters": {}, "current_cluster": "prod"}', "'prod' is not one"),
        (b'{"clusters": {}}', "missing key 'schema_version'"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_every_kind_of_broken_file_is_named_and_left_alone(
    home: Path, content: bytes, problem: str
) -> None:
    home.mkdir()
    store = StateStore(home)
    store.path.write_bytes(content)
    with pytest.raises(StateError, match=problem), store.transaction("t"):
        pass
    assert store.path.read_bytes() == content


def test_a_file_from_a_newer_dynia_says_to_upgrade(home: Path) -> None:
    home.mkdir()
    store = StateStore(home)
    store.path.write_text('{"schema_version": 7, "clusters": {}}')
    with pytest.raises(StateError) as caught:
        store.load()
    expected = f"schema_version 7 is newer than this dynia understands (up to {SCHEMA_VERSION})"
    assert expected in str(caught.value)
    assert "upgrade dynia" in (caught.value.hint or "")


def test_an_invalid_change_is_refused_and_the_file_keeps_its_last_good_version(
    home: Path,
) -> None:
    store = StateStore(home)
    with store.transaction("t") as txn:
        txn.state.clusters["prod"] = cluster("prod")
    good = store.path.read_bytes()
    with pytest.raises(StateError, match="'api' is not a service"), store.transaction("t") as txn:
        txn.state.clusters["prod"].routes["api.demo.test"] = Route("api.demo.test", "api")
    bad_name = pytest.raises(StateError, match="invalid cluster name 'Bad Name'")
    with bad_name, store.transaction("t") as txn:
        txn.state.clusters["Bad Name"] = cluster("Bad Name")
    assert store.path.read_bytes() == good
    assert store.backups() == []


def test_provider_tokens_are_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(home)
    token = "dop_v1_" + "0123456789abcdef" * 4
    compose = f"services:\n  web:\n    environment:\n      DO: {token}\n"
    with pytest.raises(StateError) as caught, store.transaction("dynia deploy") as txn:
        txn.state.clusters["prod"] = cluster("prod")
        txn.state.clusters["prod"].services["web"] = Service("web", compose, "h", 20000, 80, "web")
    assert "found one in clusters.prod.services.web.compose" in str(caught.value)
    assert not store.path.exists()

    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "Zx8-cf-token-value-0042")
    with pytest.raises(StateError, match="provider token"), store.transaction("t") as txn:
        txn.state.clusters["prod"] = cluster("prod")
        txn.state.clusters["prod"].region = "Zx8-cf-token-value-0042"
    assert not store.path.exists()


def test_temp_files_left_by_a_killed_writer_are_cleared(home: Path) -> None:
    store = StateStore(home)
    with store.transaction("t") as txn:
        txn.state.clusters["alpha"] = cluster("alpha")
    leftover = home / ".state.json.k1ll3d.tmp"
    leftover.write_text('{"half": ')
    with store.transaction("t"):
        pass
    assert not leftover.exists()
    assert list(store.load().clusters) == ["alpha"]


def test_a_waiting_command_names_the_holder_and_gives_up_after_the_timeout(home: Path) -> None:
    StateStore(home).load()
    holder = spawn(HOLDER, str(home), "dynia deploy", stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        seen: list[LockHolder | None] = []
        store = StateStore(home, lock_timeout=0.5, on_wait=seen.append)
        start = time.monotonic()
        with pytest.raises(LockTimeoutError) as caught, store.transaction("dynia render"):
            pytest.fail("entered the block without the lock")
        waited = time.monotonic() - start
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        _stop(holder)
    message = caught.value.message
    assert message.startswith(f"state is locked by pid {holder.pid} (dynia deploy) since ")
    assert message.endswith("gave up after 0.5s")
    assert f"ps -p {holder.pid}" in (caught.value.hint or "")
    assert caught.value.exit_code == 4
    assert 0.5 <= waited < 3
    assert len(seen) == 1 and seen[0] is not None
    assert (seen[0].pid, seen[0].command) == (holder.pid, "dynia deploy")
    assert holder.returncode == 0
    assert "held" in store.load().clusters


def test_a_waiting_command_proceeds_when_the_holder_finishes(home: Path) -> None:
    holder = spawn(HOLDER, str(home), "dynia sync", stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert holder.stdin is not None
        stdin = holder.stdin

        def release(_: LockHolder | None) -> None:
            stdin.close()

        store = StateStore(home, lock_timeout=30, on_wait=release)
        with store.transaction("dynia render") as txn:
            # The state is read under the lock, so the holder's last write is seen.
            assert "held" in txn.state.clusters
            txn.state.clusters["after"] = cluster("after")
    finally:
        _stop(holder)
    assert sorted(store.load().clusters) == ["after", "held"]


def test_a_killed_holder_never_blocks_and_its_record_is_not_believed(home: Path) -> None:
    holder = spawn(HOLDER, str(home), "dynia deploy", stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    store = StateStore(home, lock_timeout=0.5)
    stale = StateLock(store.lock_path, timeout=0).read_holder()
    assert stale is not None and stale.pid == holder.pid and stale.is_gone()
    start = time.monotonic()
    with store.transaction("dynia repair") as txn:
        txn.state.clusters["after"] = cluster("after")
    assert time.monotonic() - start < 0.5
    assert list(store.load().clusters) == ["after"]


def test_twenty_concurrent_writers_lose_no_update_and_the_file_always_parses(home: Path) -> None:
    store = StateStore(home)
    names = [f"racer-{i:02d}" for i in range(20)]
    procs = [spawn(ADDER, str(home), name) for name in names]
    counts = []
    try:
        while any(p.poll() is None for p in procs):
            if store.path.exists():
                counts.append(len(store.load().clusters))
            time.sleep(0.005)
    finally:
        for proc in procs:
            _stop(proc)
    errors = [p.stderr.read() for p in procs if p.returncode != 0 and p.stderr]
    assert errors == []
    assert counts == sorted(counts)
    assert sorted(store.load().clusters) == names
    backups = store.backups()
    assert len(backups) == BACKUPS_KEPT
    assert sorted(len(json.loads(p.read_text())["clusters"]) for p in backups) == list(
        range(10, 20)
    )


def _temp_files(home: Path) -> list[Path]:
    return [*home.glob(".state.json.*.tmp"), *home.glob("backups/.state.json.*.tmp")]


def _kill_when_writing(writer: subprocess.Popen[str], home: Path, rng: random.Random) -> None:
    """SIGKILL at a random moment, or (every other round) the moment a temp file appears."""
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0.05, 0.6))
    else:
        deadline = time.monotonic() + 5
        while not _temp_files(home) and time.monotonic() < deadline:
            pass
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)


def test_a_writer_killed_mid_save_leaves_a_whole_valid_file(home: Path) -> None:
    store = StateStore(home)
    rng = random.Random(7)
    rounds = mid_write = 0
    last = 0
    # Keep killing until several rounds ran and at least one kill provably hit a write.
    while rounds < 8 or (mid_write == 0 and rounds < 30):
        writer = spawn(WRITER, str(home), str(last + 1_000))
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
            _kill_when_writing(writer, home, rng)
        finally:
            _stop(writer)
        rounds += 1
        mid_write += bool(_temp_files(home))
        state = store.load()
        if state.clusters:
            web = state.clusters["big"].services["web"]
            # The compose text and its marker come from the same save: no mix of versions.
            assert web.compose.startswith(f"# {web.compose_hash}\n")
            assert state.clusters["big"].completed_steps == [f"save-{web.compose_hash}"]
            last = int(web.compose_hash)
        for backup in store.backups():
            json.loads(backup.read_bytes())
    assert mid_write >= 1
    assert last > 0
    with store.transaction("after the kills") as txn:
        txn.state.clusters["after"] = cluster("after")
    assert _temp_files(home) == []
    assert "after" in store.load().clusters
    assert serialize(store.load()) == store.path.read_bytes()
    assert os.path.getsize(store.path) > 3_000_000
