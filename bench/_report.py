"""What the benchmark scripts print alike: the command that produced a table."""

from __future__ import annotations

import os
import shlex
import sys


def command_line() -> str:
    """This run's command, as a reader would type it from the repository."""
    python = sys.executable
    if python.startswith(os.getcwd()):
        python = os.path.relpath(python)
    return f"PYTHONPATH=. {python} {shlex.join(sys.argv)}"
