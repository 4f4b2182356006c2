"""The audit package is a pure library: standard library, ``cryptography``
and a few filestore leaf modules only (one-way imports: docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import filestore.audit

ALLOWED_FILESTORE = ("filestore.audit", "filestore.errors", "filestore.clock", "filestore.crypto")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_audit_imports_only_the_standard_library_cryptography_and_leaf_modules() -> None:
    package = Path(filestore.audit.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            ok = (
                top in sys.stdlib_module_names
                or top == "cryptography"
                or name.startswith(ALLOWED_FILESTORE)
            )
            assert ok, f"{path.name} imports {name}"
