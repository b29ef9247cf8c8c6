"""Statement-duration histogram: bucket counts bumped when a statement is recorded (nothing to drain)."""

from __future__ import annotations

import bisect

DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class DurationHistogram:
    """Per-bucket counts (not cumulative), their sum and count; metrics.py makes them cumulative when scraped."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS):
        self.bounds = list(buckets)
        self.counts = [0] * (len(buckets) + 1)  # last = above the highest bound
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """One statement's duration (the hot path: one bisect, three updates)."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((repr(float(bound)), acc))
        out.append(("+Inf", self.count))
        return out
