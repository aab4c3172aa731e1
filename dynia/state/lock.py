"""The exclusive state lock: an ``fcntl.flock`` on ``state.json.lock`` plus who holds it.

The kernel releases a flock when its holder exits, however it exits, so a crashed command never
leaves the state locked. The holder's pid, command, start time and hostname are written into the
lock file itself while the lock is held, so a command that has to wait can say who it waits for.
The lock file is never deleted or replaced: a new inode would give a second, independent lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from dynia.errors import LockTimeoutError, StateError
from dynia.waiting import WaitTimeout, wait_until

# Locks this process holds, by (lock path, thread): flock does not nest, so taking the same lock
# twice in one thread would wait on itself until the timeout.
_HELD: set[tuple[str, int]] = set()
_HELD_GUARD = threading.Lock()


@dataclass(frozen=True)
class LockHolder:
    """Who holds the state lock, as written into the lock file."""

    pid: int
    command: str
    since: str  # ISO 8601, UTC
    hostname: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}) since {self.since} on {self.hostname}"

    def is_gone(self) -> bool:
        """True when the holder ran on this host and that process no longer exists."""
        if self.hostname != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    @classmethod
    def parse(cls, raw: bytes) -> LockHolder | None:
        try:
            data = json.loads(raw.decode("utf-8"))
            return cls(
                pid=int(data["pid"]),
                command=str(data["command"]),
                since=str(data["since"]),
                hostname=str(data["hostname"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


WaitCallback = Callable[[LockHolder | None], None]


class StateLock:
    """An exclusive, waiting, self-describing lock on one lock file."""

    def __init__(
        self,
        path: Path,
        timeout: float,
        poll_interval: float = 0.05,
        on_wait: WaitCallback | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.on_wait = on_wait

    def read_holder(self) -> LockHolder | None:
        """The holder recorded in the lock file, or None if it is empty or unreadable."""
        try:
            return LockHolder.parse(self.path.read_bytes())
        except OSError:
            return None

    @contextlib.contextmanager
    def held(self, command: str) -> Iterator[LockHolder]:
        """Hold the lock for the block; wait up to ``timeout`` seconds for it first."""
        key = (str(self.path), threading.get_ident())
        with _HELD_GUARD:
            if key in _HELD:
                raise StateError(
                    f"{command}: the state lock {self.path} is already held by this command",
                    hint="a state transaction was opened inside another one; "
                    "do all changes in the outer transaction",
                )
            _HELD.add(key)
        try:
            fd = self._open()
            try:
                holder = self._acquire(fd, command)
                try:
                    yield holder
                finally:
                    # Clear the holder before unlocking, so the next holder's record is never wiped.
                    os.ftruncate(fd, 0)
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            with _HELD_GUARD:
                _HELD.discard(key)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot open the state lock file {self.path}: {exc.strerror}",
                hint=f"check that {self.path.parent} exists and is writable by you",
            ) from exc

    def _acquire(self, fd: int, command: str) -> LockHolder:
        announced = False

        def locked() -> bool:
            nonlocal announced
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not announced and self.on_wait is not None:
                    self.on_wait(self._live_holder())
                    announced = True
                return False
            return True

        try:
            wait_until(
                locked,
                timeout=self.timeout,
                # Jitter keeps many waiters from polling in lockstep.
                interval=lambda: self.poll_interval * random.uniform(0.5, 1.5),
                what=f"the state lock {self.path}",
            )
        except WaitTimeout:
            raise self._timeout_error() from None
        holder = LockHolder(
            pid=os.getpid(),
            command=command,
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            hostname=socket.gethostname(),
        )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(holder), sort_keys=True).encode() + b"\n", 0)
        except OSError as exc:
            # The caller closes fd, which releases the flock: nothing is left held or half-done.
            raise StateError(
                f"{command}: cannot record the lock holder in {self.path}: {exc.strerror or exc}",
                hint=f"check free space and permissions in {self.path.parent}; nothing was changed",
            ) from exc
        return holder

    def _live_holder(self) -> LockHolder | None:
        """The recorded holder, unless that record was left behind by a process that is gone."""
        holder = self.read_holder()
        if holder is None or holder.is_gone():
            return None
        return holder

    def _timeout_error(self) -> LockTimeoutError:
        holder = self._live_holder()
        who = holder.describe() if holder else "another process (it has not said which)"
        pid = str(holder.pid) if holder else "<pid>"
        return LockTimeoutError(
            f"state is locked by {who}; gave up after {self.timeout:g}s",
            hint=(
                f"wait for it to finish (`ps -p {pid}` shows it), then re-run. The lock frees "
                "itself when its holder exits; if that process is gone and the lock stays, "
                f"another process has {self.path} open: `fuser -v {self.path}` names it"
            ),
        )
