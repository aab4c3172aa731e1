"""The state file: read, validated and migrated on load; written atomically under a lock.

A write goes to a temporary file beside ``state.json``, is fsynced, renamed over it and the folder
is fsynced, so a reader or a crash sees either the old file or the new one, never a mix. The file
being replaced is kept first as ``backups/state.json.1`` (older ones shift up to ``.10``). A file
that does not parse or validate is never written over: the transaction fails before it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynia.errors import StateError
from dynia.files import commit_temp, write_temp
from dynia.paths import HomeLayout
from dynia.state.lock import StateLock, WaitCallback
from dynia.state.migrations import SchemaTooNewError, migrate
from dynia.state.models import State
from dynia.state.validation import TOKEN_ENV_VARS, find_secret, parse_state

BACKUPS_KEPT = 10


def serialize(state: State) -> bytes:
    """The exact bytes the state file holds for ``state``: sorted keys, 2-space indent."""
    return (json.dumps(state.to_dict(), sort_keys=True, indent=2) + "\n").encode("utf-8")


class StateStore:
    """Loads and saves the state of one dynia home."""

    def __init__(
        self, home: Path, lock_timeout: float = 10.0, on_wait: WaitCallback | None = None
    ) -> None:
        self.layout = HomeLayout(Path(home))
        self.lock_timeout = lock_timeout
        self.on_wait = on_wait  # called once with the holder when a transaction has to wait

    @property
    def path(self) -> Path:
        return self.layout.state_file

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def backups(self) -> list[Path]:
        """The kept previous versions, newest first."""
        found = (self._backup(n) for n in range(1, BACKUPS_KEPT + 1))
        return [p for p in found if p.exists()]

    def load(self) -> State:
        """The current state, without locking; an empty state if there is no file yet."""
        raw = self._read()
        return State() if raw is None else self._parse(raw)

    @contextlib.contextmanager
    def transaction(self, command: str) -> Iterator[Transaction]:
        """Hold the state lock for the block and hand out the state read under it.

        Leaving the block normally saves; an exception saves nothing beyond earlier checkpoints.
        """
        self._make_home()
        lock = StateLock(self.lock_path, self.lock_timeout, on_wait=self.on_wait)
        with lock.held(command):
            self._remove_stale_temp_files()
            raw = self._read()
            state = State() if raw is None else self._parse(raw)
            txn = Transaction(self, state, raw)
            try:
                yield txn
                txn.save()
            finally:
                txn._closed = True

    # --- reading --------------------------------------------------------------------------------

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            if self.path.is_symlink():
                raise self._dangling_link() from None
            return None
        except IsADirectoryError as exc:
            raise self._directory_in_place() from exc
        except OSError as exc:
            raise StateError(
                f"cannot read the state file {self.path}: {exc.strerror}",
                hint="check that it belongs to you and is readable (chmod 600)",
            ) from exc

    def _directory_in_place(self) -> StateError:
        # No mode makes a directory readable as the state: chmod is no help here.
        aside = self.path.with_name(f"{self.path.name}.dir")
        backups = self.backups()
        then = (
            f"restore the previous version: cp {backups[0]} {self.path} "
            f"(.1 is the newest of {len(backups)} in {self.layout.backups_dir})"
            if backups
            else f"the next command starts an empty state (no backups in {self.layout.backups_dir})"
        )
        return StateError(
            f"the state file {self.path} is a directory, not a file",
            hint=f"move it away (mv {self.path} {aside}), then {then}",
        )

    def _dangling_link(self) -> StateError:
        # The link's target is the state the operator keeps (say, in a synced folder that is not
        # mounted now): reading it as "no state yet" would forget every cluster, and a save would
        # start a new state in its place.
        target = self._target()
        return StateError(
            f"the state file {self.path} is a symbolic link to {target}, which does not exist",
            hint=f"mount or restore the folder it points into ({target.parent}) so the link "
            f"finds the state again, or remove the link (rm {self.path}) to start a new, empty "
            "state in this home",
        )

    def _parse(self, raw: bytes) -> State:
        data = self._decode(raw)
        try:
            return parse_state(migrate(data))
        except SchemaTooNewError as exc:
            raise StateError(
                f"the state file {self.path} cannot be read: its {exc}",
                hint="upgrade dynia (pip install -U dynia), or restore a backup written by this "
                f"version; {self._restore_hint()}",
            ) from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise self._corrupt(str(exc)) from exc
        except RecursionError as exc:
            raise self._corrupt("a value is nested too deeply to be part of a Dynia state") from exc

    def _decode(self, raw: bytes) -> dict[str, Any]:
        if not raw.strip():
            raise self._corrupt("the file is empty")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise self._corrupt(f"byte {exc.start} is not UTF-8 text") from exc
        except json.JSONDecodeError as exc:
            raise self._corrupt(
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
        except ValueError as exc:  # e.g. a number longer than Python converts (int_max_str_digits)
            # Python's text goes on to suggest sys.set_int_max_str_digits(): no help to an operator.
            raise self._corrupt(f"a value cannot be read: {str(exc).split(';')[0]}") from exc
        except RecursionError as exc:
            # No state Dynia writes nests more than a few levels; this is damage, not data.
            raise self._corrupt("the JSON is nested too deeply to be a Dynia state") from exc
        if not isinstance(data, dict):
            raise self._corrupt(f"expected a JSON object, found {type(data).__name__}")
        return data

    def _corrupt(self, problem: str) -> StateError:
        return StateError(
            f"the state file {self.path} is invalid: {problem}",
            hint=f"it was left untouched. Fix it by hand, or {self._restore_hint()}",
        )

    def _restore_hint(self) -> str:
        backups = self.backups()
        if not backups:
            return f"move it aside to start empty (no backups exist in {self.layout.backups_dir})"
        return (
            f"restore the previous version: cp {backups[0]} {self.path} "
            f"({len(backups)} backups in {self.layout.backups_dir}, .1 is the newest)"
        )

    # --- writing --------------------------------------------------------------------------------

    def _make_home(self) -> None:
        try:
            self.layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the dynia home {self.layout.root}: {exc.strerror}",
                hint="choose a writable place with --home or DYNIA_HOME",
            ) from exc

    def _backup(self, number: int) -> Path:
        return self.layout.backups_dir / f"{self.path.name}.{number}"

    def _remove_stale_temp_files(self) -> None:
        # Only lock holders write temp files, so any left now belong to a writer that was killed.
        target = self._target()
        places = {(self.path.parent, self.path.name), (target.parent, target.name)}
        places.add((self.layout.backups_dir, self.path.name))
        for folder, name in places:
            for stale in folder.glob(f".{name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()

    def _target(self) -> Path:
        """The file a save replaces: ``state.json``, or the file it is a symbolic link to.

        Renaming over the link itself would turn it into a plain file and leave its target (the
        copy the operator actually keeps, e.g. in a synced folder) with stale data.
        """
        if not self.path.is_symlink():
            return self.path
        try:
            return self.path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise StateError(
                f"cannot follow the symbolic link {self.path}: {exc}",
                hint="point it at a real file, or replace it with one",
            ) from exc

    def _write(self, new: bytes, old: bytes | None) -> None:
        """Replace the file with ``new``, keeping ``old`` as the newest backup.

        Both files are written in full before anything is renamed, so a write that fails (a full
        disk) leaves the state and every backup as they were: the backups rotate only once the
        new state is safely on disk, and only renames (which need no space) follow.
        """
        target = self._target()
        written: list[Path] = []
        try:
            written.append(write_temp(target, new, 0o600))
            backup = self._prepare_backup(old)
            if backup is not None:
                written.append(backup)
                self._rotate_backups(backup)
            commit_temp(written[0], target)
        except OSError as exc:
            for temp in written:
                temp.unlink(missing_ok=True)
            raise StateError(
                f"cannot write the state file {target}: {exc.strerror or exc}",
                hint=f"check free space and permissions in {target.parent}; "
                "the previous file and its backups are unchanged",
            ) from exc

    def _prepare_backup(self, old: bytes | None) -> Path | None:
        """``old`` written to a temp file in backups/, or None when no new backup is due."""
        if old is None:
            return None
        newest = self._backup(1)
        # A writer killed between backup and rename leaves the old content as .1 already.
        if newest.exists() and newest.read_bytes() == old:
            return None
        self.layout.backups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return write_temp(newest, old, 0o600)

    def _rotate_backups(self, finished: Path) -> None:
        """Shift .1-.9 up by one (dropping .10) and put ``finished`` in as .1: renames only."""
        self._backup(BACKUPS_KEPT).unlink(missing_ok=True)
        for number in range(BACKUPS_KEPT - 1, 0, -1):
            if self._backup(number).exists():
                os.replace(self._backup(number), self._backup(number + 1))
        commit_temp(finished, self._backup(1))


class Transaction:
    """The state of one locked read-modify-write; ``save`` checkpoints it to disk."""

    def __init__(self, store: StateStore, state: State, on_disk: bytes | None) -> None:
        self.state = state
        self._store = store
        self._on_disk = on_disk
        self._closed = False

    def save(self) -> None:
        """Write the state now (atomically), keeping the lock; a no-op if nothing changed."""
        if self._closed:
            raise StateError(
                f"the state transaction on {self._store.path} is already over",
                hint="save inside the `with store.transaction(...)` block",
            )
        try:
            new = serialize(self.state)
        except (TypeError, ValueError) as exc:
            raise StateError(
                f"refusing to save state to {self._store.path}: {exc}",
                hint="the file on disk is unchanged; a value in the state is not plain data",
            ) from exc
        if new == self._on_disk:
            return
        _refuse_invalid(new, self._store.path)
        self._store._write(new, self._on_disk)
        self._on_disk = new


def _refuse_invalid(new: bytes, path: Path) -> None:
    """Validate exactly the bytes about to be written, as the next load will read them."""
    data = json.loads(new)
    try:
        parse_state(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(
            f"refusing to save an invalid state to {path}: {exc}",
            hint="the file on disk is unchanged; correct the input that led to this value",
        ) from exc
    secrets = [v for v in (os.environ.get(k, "") for k in TOKEN_ENV_VARS) if len(v) >= 16]
    where = find_secret(data, secrets)
    if where:
        raise StateError(
            f"refusing to save a provider token into {path}: found one in {where}",
            hint="tokens stay in the environment (DIGITALOCEAN_TOKEN, CLOUDFLARE_API_TOKEN); "
            "remove it from the input; the file on disk is unchanged",
        )
