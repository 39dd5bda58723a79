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


def test_loadtest_smoke() -> None:
    """Open-loop load test, smoke mode: one short step, the ceiling, a few seconds of soak, the
    hot-SKU run and its audit — it must run end to end and write its report, the soak's effects gate
    waits, its hop-by-hop latency and each agent's input wait included.  A worker setting
    (``--worker-env``, the default value here) must reach the workers without breaking them."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadtest.py"), "--smoke",
                          "--worker-env", "PEAKROUTE_BATCH_WAIT_MS=10"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "max sustained" in out.stdout and "of the raw ceiling" in out.stdout, out.stdout[-3000:]
    report = (ROOT / "benchmarks" / "results" / "loadtest-smoke.md").read_text()
    assert "AUDIT OK" in report
    # The soak reads each worker's effects gate from its /metrics (so that scrape cannot rot either).
    assert "'fulfillment effects': {'batches'" in report and "'stock replies': {'batches'" in report, report[-2000:]
    # ... and traces where its latency went, hop by hop, through stock-ops and stock-replies.
    assert "Where the soak's latency goes" in report and "→ SKU owner's replies sent |" in report, report[-2000:]
    assert "**held: " in report, report[-2000:]  # the soak's verdict counts the latency trend too
    # ... and each agent's input wait, and the part of it in the batch buffer, from the workers' histograms.
    for part in ("| fulfillment: Kafka timestamp → batch start |", "| stock: Kafka timestamp → batch start |",
                 "| fulfillment: in the batch buffer |", "| stock: in the batch buffer |"):
        assert part in report, report[-2000:]
    assert "Each agent's batches" in report and "| fulfillment | " in report and "| stock | " in report, report[-2000:]


def test_floor_benchmark_smoke() -> None:
    """Faust's floor per payload (benchmarks/floor.py), smoke mode: every reader — raw confluent,
    bare faust, faust + produce and the pipeline — reads the same small backlog to its end."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (ROOT / "benchmarks" / "results" / "floor-smoke.md").read_text()
    for reader in ("| confluent |", "| faust-each |", "| faust |", "| faust+produce |", "| pipeline |"):
        assert reader in table, table
