"""A/B: the drain benchmark on two git revisions, interleaved (A B A B …) in one run.

This box is noisy (2 cores shared by the broker, the worker and whatever else runs), so a speed-up
is only claimed as a ratio of runs that alternate within minutes of each other.

    python benchmarks/compare.py 9b1ec6c HEAD --orders 6000 --rounds 2

It reports the drain rates and the worker CPU time per payload (after start-up; the steadier
figure).  Both revisions are run with *this* checkout's drain.py, so older revisions get it too.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--orders", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rates: dict[str, list[float]] = {args.a: [], args.b: []}
    cpu: dict[str, list[float]] = {args.a: [], args.b: []}  # worker CPU µs per payload, after start-up
    with tempfile.TemporaryDirectory(prefix="peakroute-ab-") as tmp:
        trees = {}
        for rev in (args.a, args.b):
            path = Path(tmp) / re.sub(r"\W", "_", rev)
            subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), rev], cwd=ROOT, check=True,
                           capture_output=True)
            trees[rev] = path
            shutil.copy(ROOT / "benchmarks" / "drain.py", path / "benchmarks" / "drain.py")  # same measurement
        try:
            for r in range(args.rounds):
                for rev in (args.a, args.b) if r % 2 == 0 else (args.b, args.a):
                    out = subprocess.run([sys.executable, "benchmarks/drain.py", "--orders", str(args.orders)],
                                         cwd=trees[rev], capture_output=True, text=True, timeout=1200)
                    m = re.search(r"([\d.]+) payloads/s", out.stdout)
                    if not m:
                        raise SystemExit(f"{rev}: no result\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
                    rates[rev].append(float(m.group(1)))
                    c = re.search(r"worker CPU ([\d.]+) µs per payload", out.stdout)
                    if c:
                        cpu[rev].append(float(c.group(1)))
                    print(f"round {r + 1}: {rev:>12s} {float(m.group(1)):7.0f} payloads/s"
                          + (f", worker CPU {float(c.group(1)):5.0f} µs/payload" if c else ""), flush=True)
        finally:
            for path in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
    a, b = statistics.median(rates[args.a]), statistics.median(rates[args.b])
    print(f"\nmedian {args.a}: {a:.0f}/s, {args.b}: {b:.0f}/s, ratio b/a = {b / a:.2f} "
          f"({args.rounds} interleaved rounds, {args.orders} orders each)")
    if cpu[args.a] and cpu[args.b]:
        ca, cb = statistics.median(cpu[args.a]), statistics.median(cpu[args.b])
        print(f"worker CPU per payload: {args.a}: {ca:.0f} µs, {args.b}: {cb:.0f} µs, ratio b/a = {cb / ca:.2f}")


if __name__ == "__main__":
    main()
