"""PK sampler: batch composition, epoch length, determinism, position save/restore."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tmspr_jax.data import sampler as S


def _pids(counts: dict[int, int], seed: int = 0) -> np.ndarray:
    """Labels with ``counts[pid]`` records each, in a shuffled dataset order."""
    pids = np.concatenate([np.full(n, pid) for pid, n in counts.items()])
    return np.random.default_rng(seed).permutation(pids)


# A mix of identities with n < K, n == K, n % K != 0 and large n (K = 4).
COUNTS = {3: 1, 7: 2, 11: 4, 20: 5, 21: 7, 30: 9, 31: 12, 40: 3, 41: 17, 50: 8, 52: 6, 60: 13}
P, K = 3, 4


def _blocks(batches: np.ndarray, pids: np.ndarray) -> np.ndarray:
    """[num_batches, P, K] pid of every sampled index."""
    return pids[batches].reshape(batches.shape[0], P, K)


def test_batches_are_p_distinct_identities_times_k_consecutive():
    pids = _pids(COUNTS)
    b = S.epoch_batches(pids, P, K, seed=1, epoch=0)
    assert b.dtype == np.int32 and b.ndim == 2 and b.shape[1] == P * K and b.shape[0] > 0
    blocks = _blocks(b, pids)
    # each block of K consecutive indices is one identity, and the P blocks of a batch are distinct identities
    assert np.all(blocks == blocks[:, :, :1])
    for row in blocks[:, :, 0]:
        assert len(set(row.tolist())) == P


def test_epoch_length_and_oversampling_against_direct_count():
    pids = _pids(COUNTS)
    for epoch in range(5):
        b = S.epoch_batches(pids, P, K, seed=7, epoch=epoch)
        blocks = _blocks(b, pids)[:, :, 0]
        used = {pid: int(np.sum(blocks == pid)) for pid in COUNTS}
        cap = {pid: max(n, K) // K for pid, n in COUNTS.items()}
        # an identity appears at most floor(max(n, K) / K) times
        assert all(used[p] <= cap[p] for p in COUNTS), (used, cap)
        # the epoch stops only when fewer than P identities still have chunks
        assert sum(used[p] < cap[p] for p in COUNTS) < P
        assert sum(used.values()) == P * b.shape[0]
        # n >= K: indices are drawn without replacement within the epoch; n < K: exactly K draws from its own images
        for pid, n in COUNTS.items():
            mine = b.reshape(-1, K)[(pids[b.reshape(-1, K)[:, 0]] == pid)]
            own = set(np.flatnonzero(pids == pid).tolist())
            assert set(mine.ravel().tolist()) <= own
            if n >= K:
                assert len(np.unique(mine)) == mine.size
            else:
                assert mine.shape == (1, K)
    # pid 3 has a single image: its only block repeats it K times
    b = S.epoch_batches(pids, P, K, seed=7, epoch=0)
    only = np.flatnonzero(pids == 3)[0]
    assert np.sum(b == only) in (0, K)


def test_nominal_length_formula():
    pids = _pids(COUNTS)
    expected = 0
    for n in COUNTS.values():
        m = max(n, K)
        expected += m - m % K
    assert S.nominal_length(pids, K) == expected
    assert S.nominal_num_batches(pids, P * K, K) == -(-expected // (P * K))
    for epoch in range(3):
        assert S.epoch_batches(pids, P, K, seed=0, epoch=epoch).shape[0] <= S.nominal_num_batches(pids, P * K, K)


def test_deterministic_per_seed_and_epoch_and_varies():
    pids = _pids(COUNTS)
    a = S.epoch_batches(pids, P, K, seed=5, epoch=2)
    np.testing.assert_array_equal(a, S.epoch_batches(pids.copy(), P, K, seed=5, epoch=2))
    other_epoch = S.epoch_batches(pids, P, K, seed=5, epoch=3)
    other_seed = S.epoch_batches(pids, P, K, seed=6, epoch=2)
    for o in (other_epoch, other_seed):
        n = min(len(a), len(o))
        assert not np.array_equal(a[:n], o[:n])


def test_identity_order_is_random_not_sorted():
    pids = _pids({i: 8 for i in range(30)})
    b = S.epoch_batches(pids, 4, K, seed=0, epoch=0)
    firsts = pids[b.reshape(b.shape[0], 4, K)[:, :, 0]]
    assert any(np.any(np.diff(row) < 0) for row in firsts)
    # 30 ids x 2 chunks, P=4: at most 3 ids with at most 2 chunks each are left over
    assert 60 - 3 * 2 <= b.shape[0] * 4 <= 60


def test_too_few_identities_and_bad_sizes():
    pids = _pids({1: 5, 2: 5})
    assert S.epoch_batches(pids, 3, K, seed=0, epoch=0).shape == (0, 3 * K)
    with pytest.raises(ValueError, match="fewer than P=3"):
        S.PKSampler(pids, 12, K, seed=0)
    with pytest.raises(ValueError, match="batch_size=10 must be a positive multiple"):
        S.PKSampler(pids, 10, K, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        S.epoch_batches(np.zeros((2, 2), int), 1, K, seed=0, epoch=0)


def test_sampler_position_roundtrip_and_rollover():
    pids = _pids(COUNTS)
    s = S.PKSampler(pids, P * K, K, seed=3)
    n0 = s.num_batches(0)
    seen = [s.next() for _ in range(n0 + 2)]
    np.testing.assert_array_equal(np.stack(seen[:n0]), S.epoch_batches(pids, P, K, seed=3, epoch=0))
    np.testing.assert_array_equal(seen[n0], S.epoch_batches(pids, P, K, seed=3, epoch=1)[0])
    state = json.loads(json.dumps(s.get_state()))
    assert state == {"epoch": 1, "batch": 2}
    expected = [s.next() for _ in range(3)]
    t = S.PKSampler(pids, P * K, K, seed=3)
    t.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(t.next(), e)
    with pytest.raises(ValueError, match="'epoch' and 'batch'"):
        t.set_state({"epoch": 1})
    with pytest.raises(IndexError, match="out of range"):
        t.batch(S.SamplerPosition(0, n0))
