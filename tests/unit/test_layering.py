"""One-way imports (docs/architecture.md, "Parts and imports"), checked by
reading the source.

Every module under ``filestore/`` and ``scheduler/`` is parsed with :mod:`ast`
(nothing is imported), and every ``import``/``from … import`` statement —
relative ones resolved, ``importlib.import_module("…")``/``__import__("…")``
with a literal name included, ``if TYPE_CHECKING:`` blocks included — becomes
an edge of an import graph. The rules below are checked against that graph;
a failure names the offending file, line and import, and for a rule that is
checked transitively the chain of in-repo modules that leads to it.

Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so
the transitive walk follows those too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("filestore", "scheduler")

STDLIB = frozenset(sys.stdlib_module_names)
AWS_SDK = frozenset({"boto3", "botocore", "s3transfer", "aioboto3", "aiobotocore"})
DB_DRIVERS = frozenset(
    {"sqlite3", "psycopg", "psycopg2", "psycopg_pool", "asyncpg", "sqlalchemy", "aiosqlite"}
)
#: SQLAlchemy's expression language is how the dialect-neutral parts of the
#: metadata package speak; the raw drivers stay in the one module that runs
#: transactions.
RAW_DRIVERS = DB_DRIVERS - {"sqlalchemy"}


@dataclass(frozen=True)
class Import:
    """``module`` (in ``path`` at ``line``) imports ``target`` (absolute)."""

    module: str
    path: Path
    line: int
    target: str

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


@dataclass
class Graph:
    root: Path
    modules: dict[str, Path]
    edges: dict[str, list[Import]]

    def local(self, target: str) -> str | None:
        """The in-repo module ``target`` names (or the nearest in-repo package
        for ``from pkg import name``), None for third-party/stdlib targets."""
        while target:
            if target in self.modules:
                return target
            target = target.rpartition(".")[0]
        return None


def _top(target: str) -> str:
    return target.partition(".")[0]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# ----------------------------------------------------------------- the walker
def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a relative ``from`` names."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(module, path, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                source = _resolve(module, is_package, node.level, node.module)
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub when there
                # is one; otherwise it takes a name out of pkg.
                candidate = f"{source}.{alias.name}"
                target = candidate if candidate in modules else source
                found.append(Import(module, path, node.lineno, target))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append(Import(module, path, node.lineno, node.args[0].value))
    return found


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Graph:
    modules = find_modules(root, packages)
    edges = {name: imports_of(name, path, modules) for name, path in modules.items()}
    return Graph(root, modules, edges)


def _dependencies(graph: Graph, module: str) -> list[tuple[str, Import]]:
    """In-repo modules that importing ``module`` runs: each import's target and
    the ``__init__`` of every package above it."""
    out: list[tuple[str, Import]] = []
    for imp in graph.edges[module]:
        local = graph.local(imp.target)
        while local:
            if local in graph.modules and local != module:
                out.append((local, imp))
            local = local.rpartition(".")[0]
    return out


# ------------------------------------------------------------------ the rules
@dataclass(frozen=True)
class Rule:
    """``applies(module)`` selects the modules under the rule; ``bad(module,
    target)`` says whether that module may not import ``target``. A
    transitive rule also follows in-repo imports from the selected module."""

    name: str
    applies: Callable[[str], bool]
    bad: Callable[[str, str], bool]
    transitive: bool = False


def _own_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _leaf_only(module: str, target: str) -> bool:
    """crypto and audit: the standard library, cryptography, filestore.errors,
    filestore.clock and their own package, nothing else."""
    if _top(target) in STDLIB or _top(target) == "cryptography":
        return False
    if target in ("filestore.errors", "filestore.clock"):
        return False
    return not _within(target, _own_package(module))


LOWER_LAYERS = (
    "filestore.storage",
    "filestore.metadata",
    "filestore.crypto",
    "filestore.audit",
    "filestore.lifecycle",
    "filestore.uploads",
    "filestore.reads",
    "filestore.deletion",
    "filestore.erasure",
    "filestore.pipeline",
    "filestore.lanes",
)

#: What ``filestore.client`` may reach in the repository: the audit library
#: (it verifies receipts), the error and clock leaves, the package's version.
CLIENT_MAY_REACH = ("filestore.client", "filestore.audit", "filestore.errors", "filestore.clock")
#: Third-party packages only the server uses.
SERVER_ONLY = AWS_SDK | DB_DRIVERS | {"alembic", "apscheduler", "prometheus_client"}


def _client_bad(_module: str, target: str) -> bool:
    """The client is light: aiohttp's client (never ``aiohttp.web``; the
    spelling ``from aiohttp import web`` is caught at run time by
    tests/integration/test_client.py), aiofiles, tqdm, and no server module."""
    if _top(target) in PACKAGES:
        return target != "filestore" and not any(_within(target, p) for p in CLIENT_MAY_REACH)
    return _within(target, "aiohttp.web") or _top(target) in SERVER_ONLY


RULES = (
    Rule(
        "crypto and audit need only stdlib, cryptography, errors, clock",
        lambda m: _within(m, "filestore.crypto") or _within(m, "filestore.audit"),
        _leaf_only,
    ),
    Rule(
        "only filestore/storage/s3.py imports the AWS SDK",
        lambda m: m != "filestore.storage.s3",
        lambda _m, t: _top(t) in AWS_SDK,
    ),
    Rule(
        "only the metadata backends import a database driver",
        lambda m: not _within(m, "filestore.metadata") or m == "filestore.metadata.base",
        lambda _m, t: _top(t) in DB_DRIVERS,
    ),
    Rule(
        "only filestore/metadata/database.py imports a raw database driver",
        lambda m: m != "filestore.metadata.database",
        lambda _m, t: _top(t) in RAW_DRIVERS,
    ),
    Rule(
        "scheduler never imports aiohttp",
        lambda m: _within(m, "scheduler"),
        lambda _m, t: _top(t) == "aiohttp",
        transitive=True,
    ),
    Rule(
        "lower layers never import aiohttp or filestore.api",
        lambda m: any(_within(m, layer) for layer in LOWER_LAYERS),
        lambda _m, t: _top(t) == "aiohttp" or _within(t, "filestore.api"),
        transitive=True,
    ),
    Rule(
        "filestore/errors.py imports nothing from filestore or aiohttp",
        lambda m: m == "filestore.errors",
        lambda _m, t: _top(t) in ("filestore", "scheduler", "aiohttp"),
    ),
    Rule(
        "filestore.client reaches no server module (api, metadata, storage, scheduler, …)",
        lambda m: _within(m, "filestore.client"),
        _client_bad,
        transitive=True,
    ),
)


def violations(graph: Graph, rule: Rule) -> list[str]:
    """One line per offending import: where, what, and through which chain."""
    found: list[str] = []
    for module in sorted(m for m in graph.modules if rule.applies(m)):
        for imp in graph.edges[module]:
            if rule.bad(module, imp.target):
                found.append(f"{imp.where(graph.root)}: {module} imports {imp.target}")
        if not rule.transitive:
            continue
        # Breadth-first through in-repo modules, remembering the chain and
        # the line of ``module`` where it starts.
        seen = {module}
        queue: list[tuple[str, list[str], Import | None]] = [(module, [module], None)]
        while queue:
            current, chain, first = queue.pop(0)
            for dep, imp in _dependencies(graph, current):
                if dep in seen:
                    continue
                seen.add(dep)
                via, start = [*chain, dep], first or imp
                for inner in graph.edges[dep]:
                    if rule.bad(module, inner.target):
                        found.append(
                            f"{start.where(graph.root)}: {module} reaches {inner.target} "
                            f"(imported at {inner.where(graph.root)}) via {' -> '.join(via)}"
                        )
                queue.append((dep, via, start))
    return found


# ------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_layering(graph: Graph, rule: Rule) -> None:
    bad = violations(graph, rule)
    assert not bad, f"{rule.name}:\n  " + "\n  ".join(bad)


def test_the_walker_sees_the_real_imports(graph: Graph) -> None:
    """Guards against a walker that finds nothing and so passes every rule."""
    assert len(graph.modules) >= 25
    targets = {m: {imp.target for imp in edges} for m, edges in graph.edges.items()}
    assert "sqlalchemy" in targets["filestore.metadata.sql"]
    assert "sqlite3" in targets["filestore.metadata.database"]
    assert "filestore.errors" in targets["filestore.storage.local"]
    assert "aiohttp" in targets["filestore.api.app"]
    assert "cryptography.hazmat.primitives.ciphers.aead" in targets["filestore.crypto.keyring"]
    # `from filestore.api import files, health` names the submodules.
    assert {"filestore.api.files", "filestore.api.health"} <= targets["filestore.api.app"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_rules_catch_what_they_should(tmp_path: Path) -> None:
    """A small fake tree with one breach of each rule, spelled in the ways an
    import can hide: relative, dynamic, under TYPE_CHECKING, transitive."""
    _write(
        tmp_path,
        {
            "filestore/__init__.py": "",
            "filestore/errors.py": "from . import clock\n",
            "filestore/clock.py": "import time\n",
            "filestore/helpers.py": "import aiohttp.web\n",
            "filestore/api/__init__.py": "",
            "filestore/api/app.py": "from aiohttp import web\n",
            "filestore/crypto/__init__.py": "from .inner import x\n",
            "filestore/crypto/inner.py": (
                "import os\nfrom cryptography.hazmat.primitives import hashes\n"
                "from filestore.errors import IntegrityError\nfrom .. import helpers\n"
            ),
            "filestore/audit/__init__.py": "",
            "filestore/audit/log.py": "import importlib\nimportlib.import_module('yaml')\n",
            "filestore/storage/__init__.py": "",
            "filestore/storage/s3.py": "import boto3\n",
            "filestore/storage/local.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import botocore\n"
            ),
            "filestore/metadata/__init__.py": "",
            "filestore/metadata/base.py": "import sqlite3\n",
            "filestore/metadata/pg.py": "import sqlalchemy\n",
            "filestore/metadata/database.py": "import psycopg\n",
            "filestore/metadata/rules.py": "import asyncpg\n",
            "filestore/lifecycle.py": "from filestore.api.app import web\n",
            "scheduler/__init__.py": "",
            "scheduler/jobs.py": "from filestore import helpers\n",
            "filestore/client/__init__.py": "import aiohttp\nfrom filestore import errors\n",
            "filestore/client/aio.py": "from filestore.audit import log\nimport aiohttp.web\n",
            "filestore/client/cli.py": "from filestore.storage import s3\n",
        },
    )
    fake = build_graph(tmp_path)
    found = {rule.name: violations(fake, rule) for rule in RULES}
    crypto, aws, db, raw, sched, lower, errors, client = (found[r.name] for r in RULES)
    assert sorted(crypto) == [
        "filestore/audit/log.py:2: filestore.audit.log imports yaml",
        "filestore/crypto/inner.py:4: filestore.crypto.inner imports filestore.helpers",
    ]
    assert aws == ["filestore/storage/local.py:3: filestore.storage.local imports botocore"]
    assert db == ["filestore/metadata/base.py:1: filestore.metadata.base imports sqlite3"]
    assert raw == [
        "filestore/metadata/base.py:1: filestore.metadata.base imports sqlite3",
        "filestore/metadata/rules.py:1: filestore.metadata.rules imports asyncpg",
    ]
    assert len(sched) == 1 and "scheduler.jobs -> filestore.helpers" in sched[0]
    assert any(line.startswith("filestore/lifecycle.py:1:") for line in lower)
    assert any("filestore.crypto.inner -> filestore.helpers" in line for line in lower)
    assert errors == ["filestore/errors.py:1: filestore.errors imports filestore.clock"]
    assert "filestore/client/aio.py:2: filestore.client.aio imports aiohttp.web" in client
    assert "filestore/client/cli.py:1: filestore.client.cli imports filestore.storage.s3" in client
    assert any("reaches boto3" in line and "filestore.storage.s3" in line for line in client)
    assert not any(line.startswith("filestore/client/__init__.py") for line in client)
