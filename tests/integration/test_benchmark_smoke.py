"""The drain benchmark in smoke mode (a few hundred orders), so it cannot rot.  No timing is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_drain_benchmark_smoke() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "drain.py"), "--orders", "300", "--timeout", "240"],
                         capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "drained by 1 worker(s)" in out.stdout, out.stdout[-2000:]
