"""tmspr_jax.tools.timing: how many calls are made, which are timed, and that each timed call is waited for."""

from __future__ import annotations

import time

import jax.numpy as jnp

from tmspr_jax.tools.timing import back_to_back, time_calls


def test_time_calls_times_only_after_warmup_and_waits_for_each():
    calls, synced = [], []

    def fn():
        calls.append(len(calls))
        return len(calls)

    def sync(r):
        time.sleep(0.01)  # the wait is part of each timed call
        synced.append(r)

    times = time_calls(fn, sync, warmup=2, iters=3)
    assert len(calls) == 5 and synced == [1, 2, 3, 4, 5]
    assert len(times) == 3 and all(t >= 0.01 for t in times)


def test_back_to_back_is_per_call():
    x = jnp.ones((64, 64))
    calls = []

    def fn():
        calls.append(1)
        return x @ x

    sec = back_to_back(fn, warmup=1, steps=4)
    assert len(calls) == 5 and 0 < sec < 5
