"""The Grafana dashboard and the Prometheus config point at metrics the API really serves."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import yaml

from tests.helpers import hi, submit, wait_done

OPS = Path(__file__).resolve().parents[2] / "ops"


def test_every_dashboard_metric_is_served(client: httpx.Client) -> None:
    assert wait_done(client, submit(client, hi(max_tokens=4))["id"])["status"] == "succeeded"
    dashboard = json.loads((OPS / "grafana" / "chatq-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bchatq_[a-z_]+", e)}
    assert len(used) >= 10
    # The worker's figures (slots, batch sizes) come with its next heartbeat.
    deadline = time.monotonic() + 10
    while True:
        served = set(re.findall(r"^(chatq_[a-z_]+)", client.get("/metrics").text,
                                re.MULTILINE))
        if used <= served or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert used <= served, used - served


def test_prometheus_scrapes_the_api_metrics_path() -> None:
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
