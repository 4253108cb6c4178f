"""Executors over the runner's units on other machines (Ray), and the check of a finished output (`verify`).

Nothing here is imported by `pictag --help` or the in-process executor: Ray is loaded when `--executor ray` runs.
"""
