"""Peers and baselines the suite runs beside filestore."""
