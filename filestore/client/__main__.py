"""``python -m filestore.client upload …``: the client commands without the
server's modules (quicker to start than ``filestore``)."""

from filestore.client.cli import main

raise SystemExit(main())
