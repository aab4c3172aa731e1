"""The unit layer needs no Docker engine: every test here sees one that cannot answer."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_docker_engine(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    # A test that reached for Docker would fail on this socket instead of passing by luck on a
    # machine where an engine happens to run.
    dead = tmp_path_factory.getbasetemp() / "no-docker-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
