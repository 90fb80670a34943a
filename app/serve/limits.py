"""Per-key rate limiting: a token bucket per API key (or client address). Pure."""
from __future__ import annotations

import time


class RateLimiter:
    """`per_minute` requests a minute per key with bursts up to `burst`; 0 turns it off."""

    def __init__(self, per_minute: float, burst: int | None = None, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst or max(1, int(per_minute)))
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate
