"""Skips that must never be silent: the reasons of the skipped tests, read
from the session's own reports.

A fixture that cannot start its real server (PostgreSQL, SeaweedFS) skips
the tests that need it, and the terminal summary names why. The reasons are
read from the test reports rather than from a list the fixtures fill: under
pytest-xdist the fixtures run in worker processes, and only the reports
reach the process that prints the summary.
"""

from __future__ import annotations

import pytest


def skip_reasons(terminalreporter: pytest.TerminalReporter, *prefixes: str) -> list[str]:
    """The first line of each distinct skip reason that starts with one of
    ``prefixes``, in the order they were first reported."""
    found: dict[str, None] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if not (isinstance(report.longrepr, tuple) and len(report.longrepr) == 3):
            continue
        message = str(report.longrepr[2]).removeprefix("Skipped: ")
        first = message.partition("\n")[0].rstrip(":")
        if first.startswith(prefixes):
            found[first] = None
    return list(found)
