"""Load a role's Python code (a module, an action or a filter plugin) from its file, as Ansible
would find it, so fast tests call its functions directly."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROLES = Path(__file__).resolve().parent.parent / "roles"


def load_role_code(role: str, relative: str) -> ModuleType:
    """``roles/<role>/<relative>`` as a Python module of its own."""
    path = ROLES / role / relative
    spec = importlib.util.spec_from_file_location(f"{role}_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
