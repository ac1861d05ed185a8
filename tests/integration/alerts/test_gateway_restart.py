"""A gateway agent restarted on purpose pages no one; one that stays stopped is paged.

The real agent (``climastream edge run``), alert engine and notifier run as their own
processes on the real stack. The agent is stopped with SIGTERM, as ``systemctl restart``
does for a config change or an upgrade, and started again on the same buffer. Its last
status used to say every source was down (the agent had stopped them itself), which the
gateway-offline rule pages at once as critical: the city was paged for every restart.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from climastream.demo import Demo
from climastream.stack import Stack
from stream.alerts.testing import AlertingSystem, wait_for
from tests.integration.test_slice import _simulated_gateway

pytestmark = pytest.mark.integration

STATUS_INTERVAL_S = 2
#: the gateway timeout is 10 status intervals: more than a stop and a start take here
MISSED = 10


def _gateway_config(tmp_path: Path, gateway_id: str) -> Path:
    devices = [{"device_id": f"{gateway_id}-t{i}", "quantities": ["temperature"]} for i in range(2)]
    return _simulated_gateway(
        tmp_path,
        gateway_id,
        devices,
        cadence_s=1.0,
        status_interval_s=STATUS_INTERVAL_S,
        metrics={"listen": None},
    )


def test_a_restart_pages_no_one_and_a_stop_that_lasts_is_paged(
    stack: Stack, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    gateway_id = f"gw-restart-{run}"
    rules = {
        "rules": [
            {
                "id": "gateway-offline",
                "kind": "gateway_offline",
                "status_interval": f"{STATUS_INTERVAL_S}s",
                "missed": MISSED,
                "severity": "critical",
                "team": "operators",
            }
        ]
    }
    alerting = AlertingSystem(
        stack.config.kafka_bootstrap,
        tmp_path,
        rules,
        routes=[{"match": {}, "notify": ["operators"]}],
        contacts={"operators": {"webhook": "chat"}},
        run_id=run,
    )
    demo = Demo(stack, _gateway_config(tmp_path, gateway_id), tmp_path)
    status_file = tmp_path / "edge-status.json"

    def reporting_for(seconds: float) -> bool:
        uptime = demo.edge_status().get("uptime_s")
        return isinstance(uptime, int | float) and uptime >= seconds

    def offline_pages() -> list[datetime]:
        return [
            datetime.fromisoformat(h.json["alert"]["started_at"])
            for h in alerting.webhook.received()
            if h.json["kind"] == "firing"
            and h.json["alert"]["rule_id"] == "gateway-offline"
            and h.json["alert"].get("gateway_id") == gateway_id
        ]

    try:
        alerting.start_engine()
        alerting.start_notifier()
        demo.start_edge(run)
        wait_for(lambda: reporting_for(3 * STATUS_INTERVAL_S), 90, "the agent's statuses", poll=0.5)

        # the restart: SIGTERM, then the same agent on the same buffer
        assert demo.stop("edge") == 0
        status_file.unlink()
        demo.start_edge(run)
        wait_for(
            lambda: reporting_for(3 * STATUS_INTERVAL_S), 90, "the restarted agent's statuses",
            poll=0.5,
        )  # fmt: skip

        # a stop that lasts: paged once the gateway timeout has passed, which also shows
        # the engine and notifier were judging this gateway all along
        stopped_at = datetime.now(UTC)
        assert demo.stop("edge") == 0
        wait_for(offline_pages, 90, "the gateway-offline page of the lasting stop", poll=0.5)
        time.sleep(2)  # a second page, if any, would follow the first at once
    finally:
        demo.stop_all()
        alerting.close()

    pages = offline_pages()
    assert len(pages) == 1, pages
    assert pages[0] >= stopped_at, "the restart was paged"
