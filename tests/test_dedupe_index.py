"""Duplicate grouping without comparing every hash with every other (issue 17: 43 s at 100k
images, quadratic). The index must find exactly what the all-pairs scan finds, and the grouping
must give the same groups with the index, without it, and with verification on threads."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from prep import hamming
from prep.dedupe import HashedImage, _fine_match, group_duplicates, keep_rank
from prep.hamming import HammingIndex, plan


def _values(n: int, seed: int) -> np.ndarray:
    """Random 64-bit values, a third of them near an earlier one (1-14 bits flipped)."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    for i in range(1, n, 3):
        bits = rng.choice(64, size=rng.integers(1, 15), replace=False)
        v[i] = v[rng.integers(0, i)] ^ np.uint64(sum(1 << int(b) for b in bits))
    return v


def _brute(q: np.ndarray, v: np.ndarray, t: int) -> set[tuple[int, int]]:
    a, b = np.nonzero(np.bitwise_count(q[:, None] ^ v[None, :]) <= t)
    return set(zip(a.tolist(), b.tolist()))


@pytest.mark.parametrize("threshold", [0, 3, 8, 12, 20])
@pytest.mark.parametrize("widths", [True, [22, 21, 21], [16, 16, 16, 16], [8] * 8, None])
def test_index_finds_exactly_what_a_scan_finds(threshold, widths):
    v = _values(3000, seed=threshold)
    q = np.concatenate([v[:700], _values(300, seed=99)])  # members and strangers
    idx = HammingIndex(v, threshold, widths=widths)
    qi, vj = idx.pairs(q)
    got = list(zip(qi.tolist(), vj.tolist()))
    assert len(got) == len(set(got)) and np.all(np.diff(qi) >= 0), "each pair once, grouped by query"
    assert set(got) == _brute(q, v, threshold)
    assert len(got) >= 700  # every member finds itself at least


def test_index_with_crowded_cells_and_small_pieces(monkeypatch):
    """Many equal values (a folder of copies) make one query find more than a scan reads: it is
    scanned instead; pieces split when their candidate pairs pass the limit."""
    monkeypatch.setattr(hamming, "_PAIRS_AT_ONCE", 5000)
    v = np.concatenate([np.full(2500, 0x0123456789ABCDEF, dtype=np.uint64), _values(2500, seed=7)])
    q = np.concatenate([v[:50], v[2500:3500]])
    idx = HammingIndex(v, 8, widths=[22, 21, 21])
    qi, vj = idx.pairs(q)
    assert set(zip(qi.tolist(), vj.tolist())) == _brute(q, v, 8)
    assert len(qi) == len(set(zip(qi.tolist(), vj.tolist())))


@pytest.mark.parametrize("cells", [5, 64, 1 << 18])
def test_table_starts_counted_a_slice_at_a_time_are_the_whole_count(monkeypatch, cells):
    """The start table is counted `_CELLS_AT_ONCE` cells at a time (one bincount over 2**22 cells
    was a 32 MiB array): the same table, with empty slices and values on the slices' edges."""
    monkeypatch.setattr(hamming, "_CELLS_AT_ONCE", cells)
    rng = np.random.default_rng(cells)
    keys = np.sort(np.concatenate([rng.integers(0, 1 << 10, 3000), [0, 4, 5, 9, 10, 1023, 1023], np.full(50, 700)]).astype(np.int64))
    want = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=1 << 10))])
    got = hamming._starts(keys, 10)
    assert got.dtype == np.int32 and got.tolist() == want.tolist()
    assert hamming._starts(np.zeros(0, np.int64), 6).tolist() == [0] * 65


def test_the_plan_scans_small_sets_and_indexes_large_ones():
    assert plan(100, 8) is None  # a scan of 100 values is cheaper than any lookup
    assert plan(2_000, 8) == [13, 13, 13, 13, 12]
    assert plan(200_000, 8) == [22, 21, 21]
    assert plan(200_000, 40) is None  # a loose threshold finds too much in any chunk
    with pytest.raises(ValueError, match="cover 64 bits"):
        HammingIndex(np.zeros(3, np.uint64), 8, widths=[32, 16])


# -- grouping ------------------------------------------------------------------------------
def _hashed(n: int, seed: int) -> list[HashedImage]:
    """Images in clusters of near-equal hashes, some mirrored, with fine hashes that sometimes
    disagree; ranks vary by name, caption and size."""
    rng = np.random.default_rng(seed)
    out = []
    base = _values(n, seed)
    for i in range(n):
        h = int(base[i])
        m = int(base[(i * 7 + 3) % n]) if i % 5 else h ^ 0b1011  # every fifth: its mirror is near its own hash
        if i % 17 == 0 and i:  # a mirrored copy of the image before it
            h, m = int(rng.integers(0, 2**63)), int(base[i - 1]) ^ 0b100
        fine, fine_m = (int(rng.integers(0, 2**62)),) * 2 if i % 11 == 0 else (h << 3, m << 3)
        if i % 23 == 0:  # hashed without the fine hashes (an older record): the coarse match stands
            fine = fine_m = None
        name = f"img_{i:05d}{'_flipped' if i % 13 == 0 else ''}.png"
        out.append(HashedImage(name, Path(name), (int(rng.integers(200, 900)), 512), int(rng.integers(1000, 9000)), h, m, fine, fine_m, bool(i % 4 == 0)))
    return out


def _reference(hashed: list[HashedImage], threshold: int, mirror: bool, verify) -> list[tuple]:
    """The grouping as it was: every kept image scanned against all others (the oracle)."""
    n = len(hashed)
    h = np.array([x.hash for x in hashed], dtype=np.uint64)
    hm = np.array([x.mirror for x in hashed], dtype=np.uint64)
    taken = np.zeros(n, dtype=bool)
    groups = []
    for keep in sorted(range(n), key=lambda i: keep_rank(hashed[i])):
        if taken[keep]:
            continue
        taken[keep] = True
        d = np.bitwise_count(h[keep] ^ h).astype(np.int16)
        dm = np.bitwise_count(h[keep] ^ hm).astype(np.int16) if mirror else d
        best = np.minimum(d, dm)
        others, dist, mirrored = [], {}, []
        for j in sorted(np.nonzero((best <= threshold) & ~taken)[0].tolist(), key=lambda j: (int(best[j]), hashed[j].id)):
            is_mirror = bool(mirror and dm[j] < d[j] and d[j] > threshold)
            if not _fine_match(hashed[keep], hashed[j], is_mirror) or not verify(hashed[keep], hashed[j], is_mirror):
                continue
            taken[j] = True
            others.append(hashed[j].id)
            dist[hashed[j].id] = int(best[j])
            if is_mirror:
                mirrored.append(hashed[j].id)
        if others:
            groups.append((hashed[keep].id, sorted(others), dist, sorted(mirrored)))
    return sorted(groups)


class _Verify:
    """A pixel check stand-in that rejects a fixed third of pairs and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, a: HashedImage, b: HashedImage, mirrored: bool) -> bool:
        with self.lock:
            self.asked.append((a.id, b.id, mirrored))
        return zlib.crc32(f"{a.id}|{b.id}|{mirrored}".encode()) % 3 != 0


@pytest.mark.parametrize("mirror", [True, False])
@pytest.mark.parametrize("threshold", [4, 8, 14])
def test_grouping_is_the_same_with_the_index_without_it_and_on_threads(monkeypatch, mirror, threshold):
    from prep import dedupe

    monkeypatch.setattr(dedupe, "_BLOCK", 97)  # several blocks, a group's images in different ones
    hashed = _hashed(1500, seed=threshold)
    oracle_verify = _Verify()
    want = _reference(hashed, threshold, mirror, oracle_verify)
    assert want and any(g[3] for g in want) == mirror  # groups, with mirrored members where mirrors count
    for index, workers in ((True, 1), (None, 1), (True, 4)):
        v = _Verify()
        got = group_duplicates(hashed, threshold, mirror=mirror, verify=v, workers=workers, index=index)
        assert sorted((g.keep, g.others, g.distances, g.mirrored) for g in got) == want, (index, workers)
        if workers == 1:
            assert v.asked == oracle_verify.asked  # the same pairs, in the same order
        else:
            assert set(oracle_verify.asked) <= set(v.asked)  # ahead of the walk: a few more at most
            assert len(v.asked) <= len(oracle_verify.asked) + 4 * workers * (1 + len(hashed) // 97)


def test_a_folder_of_copies_is_one_group_without_asking_ahead_for_every_pair():
    hashed = [HashedImage(f"copy_{i:04d}.png", Path(f"copy_{i:04d}.png"), (512, 512), 5000 - i, 0xABCDEF, 0xFEDCBA, 7, 7) for i in range(600)]
    v = _Verify()
    got = group_duplicates(hashed, 8, verify=lambda a, b, m: v(a, b, m) or True, workers=4)
    assert len(got) == 1 and got[0].keep == "copy_0000.png" and len(got[0].others) == 599
    assert len(v.asked) <= 599 + 16  # each copy checked against the kept one, a few sent ahead
