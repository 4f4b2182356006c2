"""The ``filestore`` command: the people's client commands (``upload``,
``download``, …) start without loading the server (its web app, database
and scheduler modules take most of a second to import); everything else,
and anything this cannot tell apart, goes to :mod:`filestore.cli`."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from filestore.client.cli import COMMANDS

    command = next((a for a in args if not a.startswith("-")), None)
    if command in COMMANDS and args[0] == command:
        from filestore.client.cli import main as client_main

        return client_main(args)
    from filestore.cli import main as server_main

    return server_main(args)
