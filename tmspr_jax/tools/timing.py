"""Timing helpers the benchmarks share: calls timed one by one (each waited for), or back to back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def time_calls(fn: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones, ``sync`` waiting for the result."""
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return times


def back_to_back(fn: Callable[[], Any], warmup: int, steps: int) -> float:
    """Seconds per call of a JAX ``fn`` run ``steps`` times without waiting in between (dispatch overlaps, as in
    training), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    t0 = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps
