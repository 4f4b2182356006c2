"""Benchmarks and the load test: scripts run from the repository root
(``PYTHONPATH=. .venv/bin/python bench/NAME.py``), importable as ``bench.NAME``
(``tests/e2e/test_load_short.py`` runs ``bench.load``)."""
