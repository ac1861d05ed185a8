"""The console's HTTP API against its OpenAPI description, with Schemathesis.

A live console (``climastream console`` on the test broker) shows the demo pipeline's
readings, KPIs and gateway health, plus a firing alert with evidence. Then Schemathesis
(``st run``) reads ``/api/openapi.json`` from that server and sends what it generates
from it, valid and invalid, with an operator token: every response must have a documented
status, content type and schema, valid requests must be accepted and invalid ones refused,
no request may make a server error, and every operation that needs a login must refuse
requests without one. ``/api/events`` is left out: it is a stream that never ends by
itself (the browser tests read it).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from climastream.contract import Topics, encode
from climastream.stack import Stack
from tests.integration.console.conftest import ARTIFACTS, OPERATOR_TOKEN
from tests.integration.console.helpers import firing_alert, produce

pytestmark = pytest.mark.integration


def _snapshot(url: str, panel: str) -> Any:
    request = urllib.request.Request(
        f"{url}/api/snapshot/{panel}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return orjson.loads(response.read())


def _wait_until_every_panel_has_data(url: str, timeout_s: float = 90.0) -> None:
    """So the response schemas are checked against real content, not empty lists."""
    checks = {
        "map": lambda s: len(s["devices"]) >= 12 and s["zones"],
        "streams": lambda s: s["rows"],
        "kpi": lambda s: any(t["completeness"] for t in s["zones"].values()),
        "alerts": lambda s: any(a["evidence"] for a in s["active"]),
        "gateways": lambda s: s["gateways"],
        "stats": lambda s: s["counts"]["readings"] > 0,
    }
    deadline = time.monotonic() + timeout_s
    waiting = set(checks)
    while waiting:
        waiting = {panel for panel in waiting if not checks[panel](_snapshot(url, panel))}
        if waiting and time.monotonic() > deadline:
            pytest.fail(f"panels without data after {timeout_s:.0f} s: {sorted(waiting)}")
        time.sleep(1.0)


def test_the_api_does_what_its_openapi_document_says(
    console_url: str, demo_pipeline: Path, stack: Stack, tmp_path: Path
) -> None:
    alert = firing_alert()
    records = [(alert.key, encode(alert))]
    asyncio.run(produce(stack.config.kafka_bootstrap, Topics.ALERTS.name, records))
    _wait_until_every_panel_has_data(console_url)
    ARTIFACTS.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{console_url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {OPERATOR_TOKEN}",
            "--checks",
            "all",
            "--exclude-path",
            "/api/events",
            "--max-examples",
            "50",
            "--seed",
            "20261123",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
            str(ARTIFACTS / "schemathesis-console.xml"),
        ],
        cwd=tmp_path,  # Schemathesis keeps its .schemathesis/ state in the working directory
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    # the run really reached the operations (not, say, a schema it could not load)
    assert "API Operations:" in output, output
    assert "Tested: 12" in output, output
    assert result.returncode == 0, output[-8000:]
