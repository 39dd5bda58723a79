"""`peakroute normalize --channel CH < payload` — the pure normalization as a command (contract:
canonical order and exit 0, or {error, field, detail} and exit 2)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "peakroute" / "data" / "samples"


def run(channel: str, payload: bytes) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "peakroute", "normalize", "--channel", channel], input=payload,
                         capture_output=True, cwd=ROOT, timeout=60)
    return out.returncode, json.loads(out.stdout)


def test_sample_gives_the_worked_example() -> None:
    code, order = run("tmall", (SAMPLES / "tmall.json").read_bytes())
    assert code == 0
    assert order["order_id"] == "tmall:3851234567890123456" and order["payment_fen"] == 41800
    assert order["ship_to"]["province_code"] == "33" and order["created_at"] == "2026-11-10T16:00:03Z"


def test_rejection_names_the_code_and_field() -> None:
    code, rej = run("jd", b'{"orderId": "1"')
    assert code == 2 and rej["error"] == "malformed_json" and "field" in rej and rej["detail"]
