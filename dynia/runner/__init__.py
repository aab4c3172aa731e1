"""Runs the generated Ansible project's playbooks and returns typed per-node results."""

from dynia.runner.events import HostResult, PlaybookResult, ProgressEvent
from dynia.runner.protocol import PlaybookRunner
from dynia.runner.run import run_playbook

__all__ = ["HostResult", "PlaybookResult", "PlaybookRunner", "ProgressEvent", "run_playbook"]
