"""Purge and sweep jobs and their APScheduler wiring.

Filled by the purge issue: the pass itself is a plain function over
``filestore.lifecycle.Lifecycle.secure_delete``; APScheduler only times it.
"""
