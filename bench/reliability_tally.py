"""The figures of docs/reliability.md, counted by the hardening tests themselves.

    python bench/reliability_tally.py                 # runs tests/test_hardening_*.py, prints the table
    python bench/reliability_tally.py --json          # the same as JSON
    python bench/reliability_tally.py tests/test_x.py # other tests that call hardening.figure()

Each test calls `tests/hardening.py:figure(kind, tried, held)`; with $LORAPREP_TALLY set that
appends one JSON line, and this script sums them per kind. Kinds: bad_input (tried / handled),
fault (injected / survived), originals (files checked / unchanged), paid (requests that must be
sent once / sent once), lost (outputs expected / present and identical).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    "bad_input": "bad inputs tried / handled",
    "fault": "faults injected / survived",
    "originals": "originals checked / changed",
    "paid": "paid requests checked / paid twice",
    "lost": "outputs expected / lost",
}


def tally(lines: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"tried": 0, "held": 0})
    for r in lines:
        out[r["kind"]]["tried"] += int(r["tried"])
        out[r["kind"]]["held"] += int(r["held"])
    return dict(out)


def table(t: dict[str, dict[str, int]]) -> str:
    rows = ["| figure | count |", "|---|---|"]
    for kind, label in KINDS.items():
        c = t.get(kind, {"tried": 0, "held": 0})
        if kind in ("bad_input", "fault"):
            rows.append(f"| {label} | {c['tried']} / {c['held']} |")
        else:  # the number that must be 0 is the shortfall
            rows.append(f"| {label} | {c['tried']} / {c['tried'] - c['held']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tests", nargs="*", default=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_hardening_*.py")))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "tally.jsonl"
        env = {**os.environ, "LORAPREP_TALLY": str(path)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *a.tests], cwd=ROOT, env=env, check=False)
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    t = tally(lines)
    if a.json:
        print(json.dumps({"pytest_exit": proc.returncode, "figures": t, "entries": lines}, indent=2))
    else:
        print(table(t))
        print(f"\n({len(lines)} counts from {len(a.tests)} test files; pytest exit {proc.returncode})")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
