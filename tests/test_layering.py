"""The two sides are peers over common/: the server never imports the client, the client never imports the
server, and common/ imports neither. Read from the source (every import statement, top level or inside a
function, and every module name written as a string, such as the lazy exports' tables), so an import that
only runs on some path is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "server": ("cbpt.client",),
    "client": ("cbpt.server",),
    "common": ("cbpt.client", "cbpt.server"),
}


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [(node.lineno, node.module)]
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cbpt.")
        ):
            names.append((node.lineno, node.value))
    return names


def _violations(side: str) -> list[str]:
    found = []
    for path in sorted((ROOT / side).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, name in _imported_names(tree):
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[side]):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("side", sorted(FORBIDDEN))
def test_each_side_imports_only_itself_and_common(side: str) -> None:
    assert _violations(side) == []


def test_the_check_sees_imports_inside_functions_and_lazy_tables(tmp_path: Path) -> None:
    source = (
        "def late():\n    from cbpt.client.rpc import sdk\n_EXPORTS = {'X': 'cbpt.client.tuning.tuner'}\n"
    )
    names = [name for _, name in _imported_names(ast.parse(source))]
    assert "cbpt.client.rpc" in names and "cbpt.client.tuning.tuner" in names
