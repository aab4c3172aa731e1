"""The layers of docs/architecture.md hold in the code: no module imports a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dynia"
# Modules every layer may use: errors, paths, files, naming, endpoints, pki, ssh, waiting and the
# package itself (its version).
FOUNDATION = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"} | {"dynia"}
# Top to bottom; render, providers and runner are peers that know nothing of each other.
ALLOWED = {
    "cli": {"operations", "runner", "state"},
    "operations": {"render", "providers", "runner", "state"},
    "render": {"state"},
    "providers": {"state"},
    "runner": set(),
    "state": set(),
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "dynia":
        return None
    return "dynia" if len(parts) == 1 else parts[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_layer_table_names_every_package() -> None:
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(ALLOWED), "a new package needs its place in ALLOWED and the doc"


def test_no_module_imports_a_layer_above_its_own() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        allowed = FOUNDATION | ALLOWED.get(own, set()) | {own}
        for module in sorted(_imports(path)):
            layer = _layer(module)
            if layer is not None and layer not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_foundation_modules_import_no_layer() -> None:
    wrong = [
        f"dynia/{name}.py imports {module}"
        for name in sorted(FOUNDATION - {"dynia"})
        for module in sorted(_imports(PACKAGE / f"{name}.py"))
        if _layer(module) in ALLOWED
    ]
    assert not wrong, "\n".join(wrong)
