"""Which 64-bit hashes lie within `t` bits of each query, without comparing it with all of them.

Dedupe compared every image's pHash with every other one's (and its mirror's): 43 s at 100k
images, an hour and more at 1M. `HammingIndex` splits the 64 bits into `m` chunks; two hashes
within `t` bits differ in at most `t // m` bits of at least one chunk (were every chunk off by
more, the whole would be off by at least m * (t // m + 1) > t). Each chunk keeps the values
sorted by that chunk with a table of where each chunk value starts, so a query looks up its
chunk and every chunk value within `t // m` bits of it, and only the values found there are
compared exactly. The answer is exactly the brute-force one; the plan (how many chunks, or
brute force where that is cheaper: small sets, large thresholds) is chosen from a cost model
measured on this machine (`_COST`).
"""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np

_MAX_TABLE_BITS = 22
"""Widest chunk: a table of 2**22 + 1 int32 starts is 16 MiB (chosen; 3 such chunks cover 64 bits)."""

_PAIRS_AT_ONCE = 1 << 20
"""Candidate pairs (and table cells probed) handled in one piece: about 40 bytes of temporaries
each, so ~40 MiB at most (chosen; at 4M pieces a 100k-image check peaked 230 MiB higher)."""

_COST = (25.0, 20.0, 3.0)
"""ns per chunk-value lookup, per candidate found, per value of a brute-force scan; measured
with numpy on the 2-core CI box (2026-12-01; 2k to 200k values), only their ratios matter."""


def _widths(m: int) -> list[int]:
    return [64 // m + (1 if i < 64 % m else 0) for i in range(m)]


def _probes(bits: int, radius: int) -> int:
    return sum(comb(bits, i) for i in range(radius + 1))


def plan(n_values: int, threshold: int) -> list[int] | None:
    """Chunk widths of the cheapest index for `n_values` hashes and `threshold`, or None when a
    brute-force scan is cheaper."""
    lookup, found, scan = _COST
    best, best_cost = None, scan * n_values
    for m in range(1, min(threshold + 1, 64) + 1):
        widths = _widths(m)
        if max(widths) > _MAX_TABLE_BITS:
            continue
        r = threshold // m
        cost = sum(_probes(b, r) * (lookup + found * n_values / 2**b) for b in widths)
        if cost < best_cost:
            best, best_cost = widths, cost
    return best


def _flips(bits: int, radius: int) -> np.ndarray:
    """Every `bits`-bit mask with at most `radius` bits set."""
    out = [0]
    for k in range(1, radius + 1):
        out.extend(sum(1 << i for i in c) for c in combinations(range(bits), k))
    return np.array(out, dtype=np.int64)


_CELLS_AT_ONCE = 1 << 18


def _starts(sorted_keys: np.ndarray, bits: int) -> np.ndarray:
    """Where each of the 2**bits chunk values starts in `sorted_keys` (and the end), counted a
    slice of cells at a time: one `bincount` over all 2**22 cells was a 32 MiB int64 array on
    top of the table (chosen: 2**18 cells, 2 MiB of counts, at a time)."""
    n_cells = 1 << bits
    starts = np.zeros(n_cells + 1, dtype=np.int64 if len(sorted_keys) >= 2**31 else np.int32)
    total = 0
    for lo in range(0, n_cells, _CELLS_AT_ONCE):
        hi = min(n_cells, lo + _CELLS_AT_ONCE)
        a, b = np.searchsorted(sorted_keys, [lo, hi])
        counts = np.bincount(sorted_keys[a:b] - lo, minlength=hi - lo)
        np.cumsum(counts, out=starts[lo + 1:hi + 1])
        starts[lo + 1:hi + 1] += total
        total += int(b - a)
    return starts


class HammingIndex:
    """The values (uint64) within `threshold` bits of each query: `pairs(queries)`."""

    def __init__(self, values: np.ndarray, threshold: int, *, widths: list[int] | None | bool = True):
        """`widths`: True picks the plan (`plan`), None forces brute force, a list forces those chunks."""
        self.values = np.ascontiguousarray(values, dtype=np.uint64)
        self.threshold = int(threshold)
        chosen = plan(len(self.values), self.threshold) if widths is True else widths
        self.widths: list[int] | None = list(chosen) if chosen else None
        self._chunks: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []
        if self.widths is None:
            return
        if sum(self.widths) != 64 or max(self.widths) > _MAX_TABLE_BITS:
            raise ValueError(f"chunk widths {self.widths} must cover 64 bits, none wider than {_MAX_TABLE_BITS}")
        radius = self.threshold // len(self.widths)
        shift = 0
        for bits in self.widths:
            keys = ((self.values >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
            order = np.argsort(keys, kind="stable").astype(np.int64)
            self._chunks.append((shift, bits, _flips(bits, radius), _starts(keys[order], bits), order))
            shift += bits

    def pairs(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, value position) of every value within the threshold of each query,
        each pair once, grouped by query in ascending order (values within a query unordered)."""
        q = np.ascontiguousarray(queries, dtype=np.uint64)
        if not len(q) or not len(self.values):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.widths is None:
            return self._scan(q, np.arange(len(q)))
        qi_parts, vj_parts = [], []
        step = max(1, _PAIRS_AT_ONCE // max(1, sum(len(f) for _, _, f, _, _ in self._chunks)))
        for lo in range(0, len(q), step):
            qi, vj = self._lookup(q, np.arange(lo, min(len(q), lo + step)))
            qi_parts.append(qi)
            vj_parts.append(vj)
        qi, vj = np.concatenate(qi_parts), np.concatenate(vj_parts)
        order = np.argsort(qi, kind="stable")  # a few ascending runs (one per chunk and piece): merged in linear time
        return qi[order], vj[order]

    def _scan(self, q: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute force: each query against every value, a few queries at a time."""
        step = max(1, _PAIRS_AT_ONCE // len(self.values))
        qi_parts, vj_parts = [], []
        for lo in range(0, len(rows), step):
            r = rows[lo:lo + step]
            near = np.bitwise_count(q[r][:, None] ^ self.values[None, :]) <= self.threshold
            a, b = np.nonzero(near)
            qi_parts.append(r[a])
            vj_parts.append(b.astype(np.int64))
        return np.concatenate(qi_parts), np.concatenate(vj_parts)

    def _lookup(self, q: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spans = []  # per chunk: (query row, start, count) of every non-empty table cell probed
        for shift, bits, flips, starts, _ in self._chunks:
            key = ((q[rows] >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
            cells = key[:, None] ^ flips[None, :]
            s = starts[cells]
            cnt = starts[cells + 1] - s
            hit = cnt > 0
            spans.append((np.broadcast_to(rows[:, None], cells.shape)[hit], s[hit].astype(np.int64), cnt[hit].astype(np.int64)))
        per_row = np.zeros(len(q), np.int64)
        for r, _, c in spans:
            per_row += np.bincount(r, weights=c, minlength=len(q)).astype(np.int64)
        crowded = rows[per_row[rows] > len(self.values)]  # a value found more often than a scan reads: scan
        if len(crowded) and len(rows) > 1:
            keep = ~np.isin(rows, crowded)
            qi, vj = self._lookup(q, rows[keep]) if keep.any() else (np.zeros(0, np.int64), np.zeros(0, np.int64))
            qs, vs = self._scan(q, crowded)
            return np.concatenate([qi, qs]), np.concatenate([vj, vs])
        if len(crowded):
            return self._scan(q, crowded)
        total = int(per_row[rows].sum())
        if total > _PAIRS_AT_ONCE and len(rows) > 1:
            half = len(rows) // 2
            a, b = self._lookup(q, rows[:half]), self._lookup(q, rows[half:])
            return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
        qi_parts, vj_parts = [], []
        radius = self.threshold // len(self._chunks)
        for c, ((r, s, n), (_, _, _, _, order)) in enumerate(zip(spans, self._chunks)):
            if not len(n):
                continue
            qi = np.repeat(r, n)
            vj = order[np.repeat(s - (np.cumsum(n) - n), n) + np.arange(len(qi))]
            x = q[qi] ^ self.values[vj]
            keep = np.bitwise_count(x) <= self.threshold
            for shift, bits, _, _, _ in self._chunks[:c]:  # found through an earlier chunk too: kept there
                keep &= np.bitwise_count((x >> np.uint64(shift)) & np.uint64((1 << bits) - 1)) > radius
            qi_parts.append(qi[keep])
            vj_parts.append(vj[keep])
        if not qi_parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(qi_parts), np.concatenate(vj_parts)
