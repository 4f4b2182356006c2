"""``python -m filestore`` is the ``filestore`` command."""

from filestore.cli import main

raise SystemExit(main())
