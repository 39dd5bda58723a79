"""Metrics, dashboards and alerts, tested for real: promtool checks and unit-tests the rules, and a
real Prometheus (Debian's package) scrapes a worker and the reconciler under simulated load; every
dashboard panel's query must return data, and an injected oversell must fire its alert."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from peakroute.stack import ensure_debian_binary, free_port
from peakroute.streams.topics import INVENTORY, fulfillment_topic, raw_topic

from ..conftest import local_stack
from . import orders as mk
from .harness import PeakrouteProcess, produce, read_topic, unique_app_id

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
import build_dashboards  # noqa: E402

pytestmark = pytest.mark.integration
TOKEN = "obs-token"


def promtool() -> str:
    return ensure_debian_binary("promtool", "prometheus")


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def test_dashboards_are_built_from_the_panel_list() -> None:
    for uid, title, panels in build_dashboards.DASHBOARDS:
        on_disk = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / f"{uid}.json").read_text())
        assert on_disk == json.loads(json.dumps(build_dashboards.dashboard(uid, title, panels), ensure_ascii=False)), \
            "run python deploy/grafana/build_dashboards.py"


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def firing(base: str) -> set[str]:
    with urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=10) as r:
        return {a["labels"]["alertname"] for a in json.loads(r.read())["data"]["alerts"] if a["state"] == "firing"}


def post(url: str) -> int:
    req = urllib.request.Request(url, method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {TOKEN}", "X-Operator": "sre"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def test_real_prometheus_sees_every_panel_and_fires_on_oversell(tmp_path: Path) -> None:
    prometheus = ensure_debian_binary("prometheus", "prometheus")
    catalog = mk.write_catalog(tmp_path / "catalog.json", ["T-OBS", "T-SCARCE"])
    extra = {"PEAKROUTE_CATALOG_FILE": str(catalog), "PEAKROUTE_OPERATOR_TOKEN": TOKEN,
             "PEAKROUTE_BREAKER_WINDOW_S": "2"}
    with local_stack(tmp_path / "stack", catalog_file=str(catalog)) as base_settings:
        settings = replace(base_settings, app_id=unique_app_id("obs"), catalog_file=str(catalog))
        wport, rport, aport, pport = free_port(), free_port(), free_port(), free_port()
        procs = [
            PeakrouteProcess(settings, ["worker", "--metrics-port", str(wport)], tmp_path / "w.log", **extra),
            PeakrouteProcess(settings, ["reconcile", "--metrics-port", str(rport)], tmp_path / "r.log", **extra),
            PeakrouteProcess(settings, ["api", "--port", str(aport)], tmp_path / "api.log", **extra),
        ]
        config = tmp_path / "prometheus.yml"
        (tmp_path / "alerts.yml").write_bytes((RULES / "alerts.yml").read_bytes())
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n"
            f"  - job_name: peakroute-worker\n    static_configs: [{{targets: ['127.0.0.1:{wport}']}}]\n"
            f"  - job_name: peakroute-reconciler\n    static_configs: [{{targets: ['127.0.0.1:{rport}']}}]\n")
        prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{pport}"],
                                stdout=open(tmp_path / "prom.log", "wb"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{pport}"
        try:
            produce(settings, INVENTORY, [(s.encode(), orjson.dumps({"type": "snapshot", "sku": s, "warehouse": "WH-EAST",
                                                                     "on_hand": n}))
                                          for s, n in (("T-OBS", 100000), ("T-SCARCE", 3))])
            time.sleep(3)
            # Traffic: routed, backordered (scarce), a split-free mix, a bad payload, a cancel.
            sims = [mk.sim_order([("T-OBS", 1)]) for _ in range(150)] + [mk.sim_order([("T-SCARCE", 1)]) for _ in range(6)]
            produce(settings, raw_topic("tmall"), [(o.channel_order_id.encode(), mk.payload(o)) for o in sims])
            produce(settings, raw_topic("jd"), [(b"bad-1", b"{not json")])
            produce(settings, raw_topic("tmall"), [(sims[1].channel_order_id.encode(), mk.payload(sims[1]))])  # re-send
            time.sleep(8)
            produce(settings, raw_topic("tmall"), [(sims[0].channel_order_id.encode(),
                                                    mk.payload(replace(sims[0], status="cancelled",
                                                                       updated=sims[0].updated + 30)))])
            # The WMS ships one order; an operator trips the douyin breaker and one order is held.
            # A confirmation names the line's own SKU (its hold lives with that SKU's owner): ship a T-OBS line.
            def shippable(r: dict) -> bool:
                return (r.get("type") == "shipment_request" and r["lines"][0]["sku"] == "T-OBS"
                        and r["order_id"] != f"tmall:{sims[0].channel_order_id}")

            reqs = read_topic(settings, fulfillment_topic("WH-EAST"), timeout=60,
                              until=lambda rs: len(rs) > 5 and any(shippable(r) for r in rs))
            shipped = next(r for r in reqs if shippable(r))
            produce(settings, INVENTORY, [(b"T-OBS", orjson.dumps({"type": "shipment_confirmed", "sku": "T-OBS",
                                                                    "warehouse": "WH-EAST", "order_id": shipped["order_id"],
                                                                    "line_id": shipped["lines"][0]["line_id"]})),
                                          # ... and confirms a line we never reserved: counted, nothing shipped.
                                          (b"T-OBS", orjson.dumps({"type": "shipment_confirmed", "sku": "T-OBS",
                                                                   "warehouse": "WH-EAST", "order_id": "tmall:never-routed",
                                                                   "line_id": "1"}))])
            assert post(f"http://127.0.0.1:{aport}/breakers/channel:douyin/trip") == 200
            dy = mk.sim_order([("T-OBS", 1)], channel="douyin")
            produce(settings, raw_topic("douyin"), [(dy.channel_order_id.encode(), mk.payload(dy))])
            # An inventory correction below what is reserved: the router evicts and re-plans.
            produce(settings, INVENTORY, [(b"T-SCARCE", orjson.dumps({"type": "adjustment", "sku": "T-SCARCE",
                                                                       "warehouse": "WH-EAST", "delta": -2}))])
            time.sleep(15)
            missing = []
            deadline = time.monotonic() + 60
            for uid, title, expr in build_dashboards.all_queries():
                while True:
                    result = query(base, expr)
                    if result or time.monotonic() > deadline:
                        break
                    time.sleep(2)
                if not result:
                    missing.append(f"{uid} / {title}: {expr}")
            assert not missing, "panels without data:\n" + "\n".join(missing)
            assert query(base, "sum(peakroute_shipments_unmatched_total)")[0]["value"][1] == "1"
            assert query(base, 'sum(peakroute_reservation_replies_total{outcome="shipped"})')[0]["value"][1] == "1"
            # Inject an oversell the router did not make: a forged shipment request beyond stock.
            assert query(base, "max(peakroute_reconciler_oversold_units)")[0]["value"][1] == "0"
            produce(settings, fulfillment_topic("WH-EAST"), [(b"forged", orjson.dumps({
                "type": "shipment_request", "shipment_id": "forged/WH-EAST/1", "order_id": "forged",
                "warehouse": "WH-EAST", "lines": [{"line_id": "1", "sku": "T-SCARCE", "qty": 50, "gift": False}]}))])
            deadline = time.monotonic() + 90
            while "PeakRouteOversell" not in firing(base) and time.monotonic() < deadline:
                time.sleep(2)
            assert "PeakRouteOversell" in firing(base)
            assert "PeakRouteBreakerOpen" in firing(base)
            assert float(query(base, "max(peakroute_reconciler_oversold_units)")[0]["value"][1]) > 0
        finally:
            prom.terminate()
            prom.wait(10)
            for p in procs:
                p.stop()
            for p in procs:
                assert "Traceback" not in p.output(), p.output()[-3000:]
