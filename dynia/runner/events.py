"""Typed results of a playbook run, built from ansible-runner's event stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Task result keys whose values the roles report through (see roles/dynia_sync).
DRIFT_KEY = "dynia_drift"
COPIED_KEY = "dynia_sync_copied"

_STATUS_OF_EVENT = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


@dataclass(frozen=True)
class ProgressEvent:
    host: str
    index: int  # 1-based position of the host in the run (the order nodes are worked on)
    total: int
    task: str
    status: str  # ok | changed | failed | unreachable | skipped


@dataclass
class HostResult:
    ok: bool = True
    changed: int = 0
    failed: int = 0
    unreachable: bool = False
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class PlaybookResult:
    ok: bool
    rc: int
    hosts: dict[str, HostResult] = field(default_factory=dict)
    # host -> entries of the `dynia_drift` lists the run's tasks returned
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # host -> target paths the sync copied
    changed_files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(name for name, host in self.hosts.items() if not host.ok)

    @property
    def changed(self) -> int:
        return sum(host.changed for host in self.hosts.values())


def failure_message(res: dict[str, Any]) -> str:
    """The most telling message of a failed (or unreachable) task result."""
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            label = item.get("_ansible_item_label", item.get("item"))
            return f"{label}: {_message(item)}"
    return _message(res)


def _message(res: dict[str, Any]) -> str:
    text = res.get("msg") or res.get("stderr") or res.get("reason") or "failed"
    return " ".join(str(text).split())


class EventCollector:
    """Turns ansible-runner events into a PlaybookResult and ProgressEvents."""

    def __init__(
        self,
        expected_hosts: Sequence[str] = (),
        on_event: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        self._order: list[str] = []
        self._expected = list(expected_hosts)
        self._on_event = on_event
        self._stats: dict[str, dict[str, int]] = {}
        self.hosts: dict[str, HostResult] = {}
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.changed_files: dict[str, list[str]] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_stats":
            self._stats = {
                key: data.get(key) or {}
                for key in ("ok", "changed", "failures", "dark", "skipped", "rescued")
            }
        elif kind in _STATUS_OF_EVENT and data.get("host"):
            self._on_result(kind, data)
        # Nothing is written to the (temporary) artifacts: everything needed is kept here.
        return False

    def _on_result(self, kind: str, data: dict[str, Any]) -> None:
        host = data["host"]
        res = data.get("res") or {}
        result = self.hosts.setdefault(host, HostResult())
        if host not in self._order:
            self._order.append(host)
        status = _STATUS_OF_EVENT[kind]
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status in ("failed", "unreachable") and not data.get("ignore_errors"):
            result.failures.append(f"{data.get('task', 'a task')}: {failure_message(res)}")
        if status in ("ok", "changed"):  # a comparison that wrote the pending marker changed
            self._collect_reports(host, res)
        self._emit(host, data.get("task", ""), status)

    def _collect_reports(self, host: str, res: dict[str, Any]) -> None:
        facts = res.get("ansible_facts") or {}
        drift = res.get(DRIFT_KEY, facts.get(DRIFT_KEY))
        if isinstance(drift, list):
            self.reports[host] = [dict(entry) for entry in drift]
        copied = facts.get(COPIED_KEY)
        if isinstance(copied, list):
            self.changed_files[host] = sorted(str(path) for path in copied)

    def _emit(self, host: str, task: str, status: str) -> None:
        if self._on_event is None:
            return
        known = self._expected + [h for h in self._order if h not in self._expected]
        index = self._order.index(host) + 1
        self._on_event(ProgressEvent(host, index, max(len(known), index), task, status))

    def result(self, rc: int) -> PlaybookResult:
        """Final per-host results; the play recap's counts win over the events seen."""
        for host in set(self.hosts) | {h for counts in self._stats.values() for h in counts}:
            result = self.hosts.setdefault(host, HostResult())
            result.changed = self._stats.get("changed", {}).get(host, 0)
            result.failed = self._stats.get("failures", {}).get(host, 0)
            result.skipped = self._stats.get("skipped", {}).get(host, 0)
            result.unreachable = self._stats.get("dark", {}).get(host, 0) > 0
            result.ok = not result.failed and not result.unreachable
            if result.ok:
                result.failures.clear()  # rescued failures: the host recovered
        hosts = dict(sorted(self.hosts.items()))
        ok = rc == 0 and all(host.ok for host in hosts.values())
        return PlaybookResult(ok, rc, hosts, dict(self.reports), dict(self.changed_files))
