"""Politeness limits shared by the fetcher's threads: concurrency caps and per-host spacing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class HostLimits:
    """Concurrency caps (overall and per host) and per-host request spacing, shared by threads.

    Spacing rather than a token bucket: a polite crawler should not burst after an idle spell.
    The turn is taken while holding the slots, so sends are never closer than 1/rate apart.
    """

    def __init__(self, concurrency: int, rate: float, sleep: Callable[[float], None],
                 clock: Callable[[], float]) -> None:
        self._concurrency = concurrency
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._sleep, self._clock = sleep, clock
        self._overall = threading.BoundedSemaphore(concurrency)
        self._per_host: dict[str, threading.BoundedSemaphore] = {}
        self._next_turn: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            host_slots = self._per_host.setdefault(host, threading.BoundedSemaphore(self._concurrency))
        with host_slots, self._overall:
            self._wait_turn(host)
            yield

    def _wait_turn(self, host: str) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            turn = max(now, self._next_turn.get(host, now))
            self._next_turn[host] = turn + self._interval
        if turn > now:
            self._sleep(turn - now)
