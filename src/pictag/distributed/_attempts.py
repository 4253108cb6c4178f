"""The run's attempt counter, a tiny Ray actor; in a module of its own so its process never imports torch."""

from __future__ import annotations


class Attempts:
    """Counts the attempts at each unit in this run (Ray's own attempt number is not public)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def start(self, ordinal: int) -> int:
        self.counts[ordinal] = self.counts.get(ordinal, 0) + 1
        return self.counts[ordinal]
