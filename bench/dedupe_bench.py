"""Duplicate grouping at scale: the hash index against the all-pairs scan it replaced.

    python bench/dedupe_bench.py --folder /tmp/scale/in_100000 --hashes /tmp/hashes_100000.pkl

Hashes the folder once (`prep.dedupe.hash_items`, cached in --hashes), then times
`group_duplicates` on the same hashes: the all-pairs scan (`index=None`, every image against
all others, as before issue 17) and the index, each without pixel verification (the hash part
alone) and with it on 1 and N threads (the verification `prep check` and `prep dedupe` run).
Every variant must give the same groups; the script fails otherwise.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

from prep.dataset import discover
from prep.dedupe import PixelVerifier, group_duplicates, hash_items


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--hashes", type=Path, required=True, help="cache of the folder's hashes (made when missing)")
    ap.add_argument("--threshold", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-scan-verify", action="store_true", help="leave out the slowest variant (scan + verify)")
    ap.add_argument("--only", help="run only the variants whose name contains this (e.g. 'index, no verify')")
    args = ap.parse_args()
    if args.hashes.exists():
        hashed = pickle.loads(args.hashes.read_bytes())
    else:
        t = time.perf_counter()
        hashed, _ = hash_items(discover(args.folder), workers=args.workers)
        print(f"hashed {len(hashed)} images in {time.perf_counter() - t:.1f} s", flush=True)
        args.hashes.write_bytes(pickle.dumps(hashed))
    variants = [("scan, no verify", None, False, 1), ("index, no verify", True, False, 1),
                ("index, verify, 1 thread", True, True, 1), (f"index, verify, {args.workers} threads", True, True, args.workers)]
    if not args.skip_scan_verify:
        variants.insert(2, ("scan, verify, 1 thread", None, True, 1))
    if args.only:
        variants = [v for v in variants if args.only in v[0]]
    seen: dict[bool, list] = {}
    print(f"| {len(hashed)} images, threshold {args.threshold} | seconds | groups |\n|---|---:|---:|")
    for name, index, verify, workers in variants:
        t = time.perf_counter()
        groups = group_duplicates(hashed, args.threshold, verify=PixelVerifier() if verify else None, workers=workers, index=index)
        dt = time.perf_counter() - t
        key = [(g.keep, g.others, g.mirrored) for g in groups]
        if seen.setdefault(verify, key) != key:
            print(f"{name}: groups differ from the other variant", file=sys.stderr)
            return 1
        print(f"| {name} | {dt:.1f} | {len(groups)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
