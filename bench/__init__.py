"""Benchmarks of the report service, run by `make bench` (`python -m bench [create|worker|reaper]`).

Every part measures the service next to a floor or baseline taken in the same run, against one moto server
started for the run, and prints a table plus "target met" / "TARGET MISSED" per target. A missed target does
not change the exit code; only a crash does.

This package must not import chalicelib at import time: `bench/__main__.py` sets the environment first,
because the settings are read once per process.
"""
