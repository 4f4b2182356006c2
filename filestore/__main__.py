"""``python -m filestore`` is the ``filestore`` command."""

from filestore.entry import main

raise SystemExit(main())
