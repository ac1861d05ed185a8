"""A minute-long broker outage on the cloud side, with the whole system running.

A gateway agent with simulated devices, the KPI worker, the InfluxDB sink, the alert engine,
the notifier, the console and ``climastream tail`` run as their own processes, as in
production. The broker is paused (SIGSTOP; Tansu keeps its data in memory, see
:meth:`climastream.stack.Stack.pause`) for longer than the consumer session timeout and the
alert engine's gateway timeout, then resumed. Afterwards every reading is stored exactly
once, the windows of the outage have complete KPIs, every service is still running, and
no one was paged about gateways that were fine all along.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from climastream.contract import Alert, ReadingBatch, Topics, decode
from climastream.demo import ROOT, Demo, count_samples
from climastream.stack import Stack
from sinks.notify.testing import free_port
from stream.alerts.testing import AlertingSystem, wait_for
from tests.integration.test_slice import (
    _device_means,
    _end_offsets,
    _read_topic,
    _simulated_gateway,
    _window_values,
)

pytestmark = pytest.mark.integration

#: longer than the consumer session timeout (3 s) and the gateway timeout below (6 s)
OUTAGE_S = 60.0
STATUS_INTERVAL_S = 2
WINDOW = timedelta(seconds=10)  # deploy/local/demo-stream.yaml
TAIL = [sys.executable, "-m", "climastream.cli", "tail"]


def _gateway_config(tmp_path: Path, gateway_id: str, prefix: str) -> Path:
    devices = [
        {
            "device_id": f"{prefix}-th-{i}",
            "zone": ("centre", "park", "north")[i % 3],
            "quantities": ["temperature", "relative_humidity"],
        }
        for i in range(10)
    ]
    return _simulated_gateway(
        tmp_path,
        gateway_id,
        devices,
        cadence_s=0.1,
        batch_max_readings=200,
        status_interval_s=STATUS_INTERVAL_S,
    )


def _rules() -> dict[str, Any]:
    return {
        "defaults": {"renotify": "10m"},
        "rules": [
            {
                "id": "gateway-offline",
                "kind": "gateway_offline",
                "status_interval": f"{STATUS_INTERVAL_S}s",
                "missed": 3,
                "severity": "critical",
                "team": "operators",
            },
            {
                "id": "sensor-stale",
                "kind": "stale",
                "cadence": "1s",
                "missed": 10,
                "severity": "warning",
                "team": "operators",
            },
            {
                "id": "data-completeness",
                "kind": "threshold",
                "kpi_id": "completeness",
                "scope": "device",
                "direction": "below",
                "set": 0.5,
                "clear": 0.8,
                "severity": "info",
                "team": "operators",
            },
        ],
    }


def _snapshot(url: str, token: str, panel: str, query: str = "") -> Any:
    request = urllib.request.Request(
        f"{url}/api/snapshot/{panel}{query}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _tail_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def test_a_minute_long_broker_outage_loses_nothing_and_pages_no_one(
    stack: Stack, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    gateway_id, prefix = f"gw-out-{run}", f"o{run}"
    since = datetime.now(UTC) - timedelta(seconds=1)
    bootstrap = stack.config.kafka_bootstrap
    readings_from = asyncio.run(_end_offsets(bootstrap, Topics.READINGS.name))
    kpi_from = asyncio.run(_end_offsets(bootstrap, Topics.KPI.name))
    alerts_from = asyncio.run(_end_offsets(bootstrap, Topics.ALERTS.name))
    late_from = asyncio.run(_end_offsets(bootstrap, Topics.LATE_READINGS.name))

    def stored() -> int:
        return count_samples(stack.config.tsdb_url, "reading_value", since, {"gateway": gateway_id})

    alerting = AlertingSystem(
        bootstrap,
        tmp_path,
        _rules(),
        routes=[{"match": {}, "notify": ["operators"]}],
        contacts={"operators": {"email": "ops@city.test", "webhook": "chat"}},
        run_id=run,
    )
    demo = Demo(stack, _gateway_config(tmp_path, gateway_id, prefix), tmp_path)
    console_port = free_port()
    console_url = f"http://127.0.0.1:{console_port}"
    tail_out = tmp_path / "tail.jsonl"
    tail: subprocess.Popen[bytes] | None = None
    try:
        alerting.start_engine()
        alerting.start_notifier()
        demo.start(run, app_id=f"kpi-outage-{run}")
        token = demo.start_console(console_port)
        with tail_out.open("wb") as out:
            tail = subprocess.Popen(
                [*TAIL, "--kafka", bootstrap, "--gateway", gateway_id, "--json"],
                stdout=out,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
                cwd=ROOT,
            )
        wait_for(lambda: stored() > 500, 90, "readings stored before the outage", poll=1)
        wait_for(lambda: _tail_lines(tail_out), 60, "tail shows readings", poll=1)
        time.sleep(5)
        demo.check_alive()

        paused_at = datetime.now(UTC)
        stack.pause("kafka")
        try:
            time.sleep(OUTAGE_S)
        finally:
            stack.resume("kafka")
        resumed = datetime.now(UTC)

        # the readings of after the outage flow again, end to end
        def flowing_after_outage() -> bool:
            return (
                count_samples(
                    stack.config.tsdb_url,
                    "reading_value",
                    resumed + timedelta(seconds=5),
                    {"gateway": gateway_id},
                )
                > 100
            )

        wait_for(flowing_after_outage, 120, "readings after the outage stored", poll=1)
        time.sleep(10)
        edge_stopped = datetime.now(UTC)  # its sensors then go quiet: that does alert
        assert demo.stop("edge") == 0
        sent = int(str(demo.edge_status()["readings_sent_total"]))

        wait_for(lambda: stored() >= sent, 90, f"{sent} readings stored", poll=1)
        time.sleep(3)
        stored_total = stored()

        # 2. every service still runs (none exited) and still processes
        for name, proc in {**demo.procs, **alerting.procs}.items():
            if name == "edge":
                continue
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        assert tail.poll() is None, f"tail exited with {tail.returncode}"

        # 4. the console and tail show live data of after the outage
        def tail_recovered() -> bool:
            return any(
                datetime.fromisoformat(str(line.get("event_time"))) > resumed + timedelta(seconds=2)
                for line in _tail_lines(tail_out)
                if line.get("event_time")
            )

        wait_for(tail_recovered, 60, "tail shows readings of after the outage", poll=1)

        seen: dict[str, Any] = {}

        def console_recovered() -> bool:
            # ours alone: which rows fit the row limit depends on what earlier tests left
            snapshot = _snapshot(console_url, token, "streams", f"?device={prefix}-")
            ours = [row for row in snapshot["rows"] if str(row["id"]).startswith(prefix)]
            newest = max((row["points"][-1][0] for row in ours if row["points"]), default=None)
            seen.update(
                rows=len(snapshot["rows"]),
                omitted=snapshot["omitted"],
                ours=len(ours),
                newest=newest,
            )
            return newest is not None and newest > resumed.timestamp()

        try:
            wait_for(console_recovered, 60, "the console shows readings after the outage", poll=1)
        except AssertionError as exc:
            stats = _snapshot(console_url, token, "stats")  # the feed's state and counts
            log = (tmp_path / "console.log").read_text(errors="replace").splitlines()
            raise AssertionError(
                f"{exc}; resumed at {resumed.timestamp():.0f}, the console showed {seen} "
                f"and {stats}; its log ends: {log[-5:]}"
            ) from None

        # a batch whose acknowledgement the outage cut off is sent again: Kafka holds it
        # twice, the pipeline de-duplicates by (device, seq)
        readings = list(
            {
                (r.device_id, r.seq, r.quantity): r
                for raw in asyncio.run(_read_topic(bootstrap, Topics.READINGS.name, readings_from))
                for r in decode(raw, ReadingBatch).readings
                if r.gateway_id == gateway_id
            }.values()
        )
        expected = _window_values(readings)
        kpis = _device_means(bootstrap, kpi_from, prefix, len(expected), 60)
        late = [
            r
            for raw in asyncio.run(_read_topic(bootstrap, Topics.LATE_READINGS.name, late_from))
            for r in decode(raw, ReadingBatch).readings
            if r.gateway_id == gateway_id
        ]
        time.sleep(2 * STATUS_INTERVAL_S)
        alerts = [
            a
            for raw in asyncio.run(_read_topic(bootstrap, Topics.ALERTS.name, alerts_from))
            if ((a := decode(raw, Alert)).gateway_id == gateway_id
                or (a.device_id or "").startswith(prefix))
            and paused_at <= a.started_at < edge_stopped
        ]  # fmt: skip
        # what reached people about them (the notifier pages for what is on ``alerts``)
        paged = {a.fingerprint for a in alerts}
        hooks = [h for h in alerting.webhook.received() if h.json["alert"]["fingerprint"] in paged]
        mails = [m for m in alerting.mails() if m.fingerprint in paged]

        # the engine and the notifier still work: the gateway stopped for real, and that
        # is paged (its gateway timeout after its last status)
        def gateway_stop_paged() -> bool:
            return any(
                h.json["alert"].get("gateway_id") == gateway_id
                and h.json["alert"]["rule_id"] == "gateway-offline"
                and datetime.fromisoformat(h.json["alert"]["started_at"]) >= edge_stopped
                for h in alerting.webhook.received()
            )

        deadline = time.monotonic() + 60
        while not (stop_paged := gateway_stop_paged()) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        if tail is not None and tail.poll() is None:
            tail.send_signal(signal.SIGTERM)
            tail.wait(timeout=30)
        demo.stop_all()
        alerting.close()

    # 1. every reading the edge sent is stored exactly once, counted by (device, seq)
    assert len(readings) == sent
    assert stored_total == sent
    emitted = {
        (k.device_id, k.quantity.value if k.quantity else "", k.window_start): k for k in kpis
    }
    missing = sorted(set(expected) - set(emitted), key=lambda k: (k[2], k[0], k[1]))
    assert not missing, f"{len(missing)} windows without a KPI, e.g. {missing[:3]}"
    assert set(expected) == set(emitted)
    wrong = {
        key: (emitted[key].sample_count, len(values))
        for key, values in expected.items()
        if emitted[key].sample_count != len(values)
    }
    assert not wrong, f"{len(wrong)} windows with readings missing, e.g. {list(wrong.items())[:3]}"
    for key, values in expected.items():
        assert emitted[key].sample_count == len(values), key
        assert emitted[key].value == pytest.approx(sum(values) / len(values), rel=1e-12)

    assert not late, f"{len(late)} readings of the outage were late"

    # 3. nobody is paged about gateways that were fine while only the broker was away
    assert not alerts, [(a.rule_id, a.state.value, a.summary) for a in alerts]
    assert not hooks
    assert not mails
    # (an outage alert still open, or within its renotify, would hold this one back)
    assert stop_paged, "the engine or the notifier did not page the gateway's real stop"
