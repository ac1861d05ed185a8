"""The Grafana dashboards are valid, current, and query only what the sink writes."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from climastream.contract import (
    Alert,
    AlertSeverity,
    AlertState,
    GatewayStatus,
    KpiValue,
    Quantity,
    Reading,
    Topics,
)
from sinks.config import load_config
from sinks.lineprotocol import alert_line, gateway_status_line, kpi_line, reading_line

GRAFANA = Path(__file__).resolve().parents[3] / "deploy" / "grafana"
PRODUCTION_SINK = GRAFANA.parent / "production" / "config" / "sink.yaml"
EXPECTED = {"city-overview", "air-quality", "urban-heat", "data-quality", "gateway-health"}


def _sample_lines() -> dict[str, str]:
    """topic -> the line the sink renders for a full record of that topic."""
    now = datetime.now(UTC)
    lines = [
        reading_line(
            Reading(
                device_id="d",
                gateway_id="g",
                seq=1,
                quantity=Quantity.TEMPERATURE,
                value=1.0,
                unit="Cel",
                event_time=now,
                ingest_time=now,
                zone="z",
                score=0.1,
                model_id="m",
            )
        ),
        kpi_line(
            KpiValue(
                kpi_id="eaqi",
                kpi_version="1",
                zone="z",
                device_id="d",
                quantity=Quantity.PM2_5,
                window_start=now - timedelta(seconds=10),
                window_end=now,
                value=2.0,
                unit="1",
                sample_count=3,
                completeness=1.0,
                band="fair",
                model_ids=("m",),
            )
        ),
        alert_line(
            Alert(
                fingerprint="0123456789abcdef",
                rule_id="r",
                state=AlertState.FIRING,
                severity=AlertSeverity.WARNING,
                summary="s",
                zone="z",
                team="t",
                device_id="d",
                gateway_id="g",
                value=1.0,
                threshold=0.5,
                started_at=now,
                updated_at=now,
            )
        ),
        gateway_status_line(
            GatewayStatus(
                gateway_id="g",
                time=now,
                software_version="1",
                uptime_s=1.0,
                buffer_depth=1,
                buffer_bytes=1,
                buffer_capacity_bytes=2,
                buffer_oldest_age_s=1.0,
                outage_capacity_hours=2.0,
                dropped={"buffer_full": 1},
                decode_errors={"crc": 1},
                clock_synchronized=True,
            )
        ),
    ]
    topics = [Topics.READINGS, Topics.KPI, Topics.ALERTS, Topics.GATEWAY_STATUS]
    return {topic.name: line for topic, line in zip(topics, lines, strict=True)}


def _measurement(line: str) -> str:
    return re.split(r"(?<!\\)[ ,]", line, maxsplit=1)[0]


def _schema() -> dict[str, tuple[set[str], set[str]]]:
    """measurement -> (tags, fields), read from lines the sink renders for full records."""
    schema: dict[str, tuple[set[str], set[str]]] = {}
    for line in _sample_lines().values():
        head, fields, _ts = re.split(r"(?<!\\) ", line)
        measurement, *tags = head.split(",")
        schema[measurement] = (
            {t.split("=")[0] for t in tags},
            {f.split("=")[0] for f in re.split(r",(?=[a-z_]+=)", fields)},
        )
    return schema


def _boards() -> dict[str, dict[str, object]]:
    return {p.stem: json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")}


def test_every_dashboard_exists_and_is_current() -> None:
    boards = _boards()
    assert set(boards) == EXPECTED
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dashboards() == boards, "run: python deploy/grafana/generate.py"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_query_existing_measurements_and_fields(name: str) -> None:
    schema = _schema()
    board = _boards()[name]
    uids = set()
    panels = board["panels"]
    assert isinstance(panels, list)
    assert panels
    for panel in panels:
        uids.add(panel["id"])
        assert panel["datasource"]["uid"] == "climastream-influx"
        (target,) = panel["targets"]
        query = target["query"]
        assert re.match(r'from\(bucket: "\$\{\w+\}"\)', query), panel["title"]
        assert "range(start: v.timeRangeStart" in query
        measurements = re.findall(r'r\._measurement == "([^"]+)"', query)
        assert len(measurements) == 1, panel["title"]
        tags, fields = schema[measurements[0]]
        exact = re.findall(r'r\._field == "([^"]+)"', query)
        pattern = re.findall(r"r\._field =~ /([^/]+)/", query)
        assert exact or pattern, f"{panel['title']}: no field filter"
        for field in exact:
            assert field in fields, f"{panel['title']}: {measurements[0]} has no field {field}"
        for regex in pattern:
            assert any(re.search(regex, f) for f in fields), f"{panel['title']}: {regex}"
        for tag in re.findall(r"r\.([a-z_]+) (?:==|=~)", query):
            if tag not in ("_measurement", "_field", "_value"):
                assert tag in tags, f"{panel['title']}: {measurements[0]} has no tag {tag}"
        for columns in re.findall(r"group\(columns: \[([^\]]*)\]\)", query):
            for column in re.findall(r'"([a-z_]+)"', columns):
                assert column in tags, f"{panel['title']}: cannot group by {column}"
    assert len(uids) == len(panels)


def test_provisioning_files_point_at_flux_and_the_dashboards() -> None:
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "climastream.yaml").read_text()
    )
    (source,) = datasource["datasources"]
    assert source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "Flux"
    assert source["uid"] == "climastream-influx"
    assert source["secureJsonData"]["token"] == "${INFLUX_TOKEN}"  # from env, not the file
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "climastream.yaml").read_text()
    )
    assert providers["providers"][0]["type"] == "file"


def _constants(board: dict[str, Any]) -> dict[str, str]:
    """The dashboard's constant variables: name -> value."""
    templating = board["templating"]
    assert isinstance(templating, dict)
    return {v["name"]: v["query"] for v in templating["list"] if v["type"] == "constant"}


@pytest.mark.parametrize("sink_yaml", [None, PRODUCTION_SINK], ids=["defaults", "production"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_query_the_bucket_the_sink_writes_their_measurement_to(
    name: str, sink_yaml: Path | None
) -> None:
    """A panel on the wrong bucket is always empty: readings go to the raw bucket."""
    influx = load_config(sink_yaml).influx
    topic_of = {_measurement(line): topic for topic, line in _sample_lines().items()}
    board = _boards()[name]
    constants = _constants(board)
    panels = board["panels"]
    assert isinstance(panels, list)
    for panel in panels:
        query = panel["targets"][0]["query"]
        (variable,) = re.findall(r'from\(bucket: "\$\{(\w+)\}"\)', query)
        (measurement,) = re.findall(r'r\._measurement == "([^"]+)"', query)
        expected = influx.bucket_for(topic_of[measurement])
        assert constants[variable] == expected, (
            f"{name} / {panel['title']}: {measurement} is in bucket {expected}, "
            f"the panel reads {constants[variable]}"
        )
    # the zone picker lists the zones of the KPIs (readings carry the same zones)
    templating = board["templating"]
    assert isinstance(templating, dict)
    for variable in templating["list"]:
        for bucket in re.findall(r'bucket: "\$\{(\w+)\}"', variable.get("query", "")):
            assert constants[bucket] == influx.bucket_for(Topics.KPI.name)
