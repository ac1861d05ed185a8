"""Grafana dashboards as code: writes deploy/grafana/dashboards/*.json (Flux, InfluxDB 2).

Run ``python deploy/grafana/generate.py`` after editing; a unit test fails if the committed
JSON differs from what this script produces, and checks every query against the sink's
schema (sinks/lineprotocol.py: measurements reading, kpi, alert, gateway_status).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "influxdb", "uid": "climastream-influx"}
#: The sink's buckets (sinks/config.py defaults, deploy/production/config/sink.yaml):
#: readings go to the short-lived raw bucket, KPIs, alerts and gateway status to the
#: long-lived one. A unit test holds every panel to where the sink writes its measurement.
BUCKET = "${bucket}"
RAW_BUCKET = "${raw_bucket}"
BUCKET_NAMES = {"bucket": "climastream", "raw_bucket": "climastream-raw"}
MEASUREMENT_BUCKETS = {"reading": RAW_BUCKET}


def flux(measurement: str, field: str, *filters: str, agg: str = "mean", group: str = "") -> str:
    bucket = MEASUREMENT_BUCKETS.get(measurement, BUCKET)
    lines = [
        f'from(bucket: "{bucket}")',
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)",
        f'  |> filter(fn: (r) => r._measurement == "{measurement}")',
        f'  |> filter(fn: (r) => r._field == "{field}")'
        if not field.startswith("/")
        else f"  |> filter(fn: (r) => r._field =~ {field})",
    ]
    lines += [f"  |> filter(fn: (r) => {f})" for f in filters]
    if group:
        lines.append(f"  |> group(columns: [{group}])")
    if agg:
        lines.append(f"  |> aggregateWindow(every: v.windowPeriod, fn: {agg}, createEmpty: false)")
    return "\n".join(lines)


#: ongoing alerts: each alert is one series (sinks/SCHEMA.md: its tags are only what its
#: fingerprint is made of, never severity or team), its last ``active`` is 1 until it
#: resolves; counts the alerts with a state change in the dashboard's time range
ACTIVE_ALERTS = "\n".join(
    [
        f'from(bucket: "{BUCKET}")',
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)",
        '  |> filter(fn: (r) => r._measurement == "alert" and r._field == "active")',
        "  |> last()",
        "  |> group()",
        "  |> sum()",
    ]
)


def panel(
    title: str,
    query: str,
    *,
    kind: str = "timeseries",
    unit: str = "",
    x: int = 0,
    y: int = 0,
    w: int = 12,
    h: int = 8,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> dict[str, Any]:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "targets": [{"refId": "A", "datasource": DATASOURCE, "query": query}],
    }


EAQI_STEPS = [
    (None, "#50f0e6"),
    (2, "#50ccaa"),
    (3, "#f0e641"),
    (4, "#ff5050"),
    (5, "#960032"),
    (6, "#7d2181"),
]
ZONE = "r.zone =~ /^${zone:regex}$/"


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], zone_var: bool = True
) -> dict[str, Any]:
    variables: list[dict[str, Any]] = [
        {"name": name, "type": "constant", "query": bucket, "hide": 2}
        for name, bucket in BUCKET_NAMES.items()
    ]
    if zone_var:
        variables.append(
            {
                "name": "zone",
                "type": "query",
                "datasource": DATASOURCE,
                "includeAll": True,
                "multi": True,
                "query": (
                    'import "influxdata/influxdb/schema"\n'
                    'schema.tagValues(bucket: "${bucket}", tag: "zone")'
                ),
            }
        )
    for index, p in enumerate(panels, start=1):
        p["id"] = index
    return {
        "uid": uid,
        "title": title,
        "tags": ["climastream"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        "city-overview": dashboard(
            "climastream-city",
            "climastream · City overview",
            [
                panel(
                    "EAQI per zone",
                    flux("kpi", "value", 'r.kpi == "eaqi"', ZONE, agg="max"),
                    kind="stat",
                    w=8,
                    thresholds=EAQI_STEPS,
                ),
                panel(
                    "UHI intensity per zone",
                    flux("kpi", "value", 'r.kpi == "uhi.intensity"', ZONE),
                    unit="celsius",
                    x=8,
                    w=8,
                ),
                panel(
                    "Active alerts",
                    ACTIVE_ALERTS,
                    kind="stat",
                    x=16,
                    w=8,
                ),
                panel(
                    "Temperature per zone (mean)",
                    flux("reading", "value", 'r.quantity == "temperature"', ZONE, group='"zone"'),
                    unit="celsius",
                    y=8,
                    w=12,
                ),
                panel(
                    "Readings stored per minute",
                    flux("reading", "value", agg="count", group='"gateway"'),
                    x=12,
                    y=8,
                    w=12,
                ),
            ],
        ),
        "air-quality": dashboard(
            "climastream-air",
            "climastream · Air quality",
            [
                panel(
                    "EAQI band index",
                    flux("kpi", "value", 'r.kpi == "eaqi"', ZONE, agg="max"),
                    w=24,
                    thresholds=EAQI_STEPS,
                ),
                panel(
                    "PM2.5",
                    flux("reading", "value", 'r.quantity == "pm2_5"', ZONE, group='"zone"'),
                    unit="conμgm3",
                    y=8,
                ),
                panel(
                    "PM10",
                    flux("reading", "value", 'r.quantity == "pm10"', ZONE, group='"zone"'),
                    unit="conμgm3",
                    x=12,
                    y=8,
                ),
                panel(
                    "NO2",
                    flux("reading", "value", 'r.quantity == "no2"', ZONE, group='"zone"'),
                    unit="conμgm3",
                    y=16,
                ),
                panel(
                    "EAQI per pollutant",
                    flux("kpi", "value", 'r.kpi == "eaqi.pollutant"', ZONE, agg="max"),
                    x=12,
                    y=16,
                ),
            ],
        ),
        "urban-heat": dashboard(
            "climastream-heat",
            "climastream · Urban heat",
            [
                panel(
                    "UHI intensity",
                    flux("kpi", "value", 'r.kpi == "uhi.intensity"', ZONE),
                    unit="celsius",
                    w=12,
                ),
                panel(
                    "Night-time UHI",
                    flux("kpi", "value", 'r.kpi == "uhi.night"', ZONE, agg="max"),
                    unit="celsius",
                    x=12,
                    w=12,
                ),
                panel(
                    "Heat index",
                    flux("kpi", "value", 'r.kpi == "heat.heat_index"', ZONE, agg="max"),
                    unit="celsius",
                    y=8,
                ),
                panel(
                    "Heatwave status",
                    flux("kpi", "value", 'r.kpi == "heatwave.status"', ZONE, agg="max"),
                    kind="state-timeline",
                    x=12,
                    y=8,
                ),
                panel(
                    "Air temperature",
                    flux("reading", "value", 'r.quantity == "temperature"', ZONE, group='"zone"'),
                    unit="celsius",
                    y=16,
                    w=24,
                ),
            ],
        ),
        "data-quality": dashboard(
            "climastream-quality",
            "climastream · Data quality and completeness",
            [
                panel(
                    "Completeness per device",
                    flux("kpi", "completeness", ZONE, group='"device"', agg="min"),
                    unit="percentunit",
                    w=24,
                    thresholds=[(None, "red"), (0.8, "orange"), (0.95, "green")],
                ),
                panel(
                    "KPI samples per window",
                    flux("kpi", "sample_count", ZONE, agg="sum", group='"kpi"'),
                    y=8,
                ),
                panel(
                    "Edge model scores",
                    flux("reading", "score", ZONE, agg="max", group='"device"'),
                    x=12,
                    y=8,
                ),
            ],
        ),
        "gateway-health": dashboard(
            "climastream-gateways",
            "climastream · Gateway health",
            [
                panel(
                    "Buffer depth",
                    flux("gateway_status", "buffer_depth", agg="last", group='"gateway"'),
                    w=12,
                ),
                panel(
                    "Oldest buffered reading",
                    flux("gateway_status", "buffer_oldest_age_s", agg="last", group='"gateway"'),
                    unit="s",
                    x=12,
                    w=12,
                ),
                panel(
                    "Outage the buffer can absorb",
                    flux("gateway_status", "outage_capacity_hours", agg="last", group='"gateway"'),
                    unit="h",
                    y=8,
                    thresholds=[(None, "red"), (6, "orange"), (24, "green")],
                ),
                panel(
                    "Drops by reason", flux("gateway_status", "/^dropped_/", agg="last"), x=12, y=8
                ),
                panel(
                    "Readings sent",
                    flux("gateway_status", "readings_sent_total", agg="last", group='"gateway"'),
                    y=16,
                    w=24,
                ),
                # 0: the gateway's clock is wrong (a Pi after a power cut, until NTP syncs),
                # and so are the times of what it sends; no line: it cannot tell
                panel(
                    "Clock synchronized (0: the gateway's times are wrong)",
                    flux("gateway_status", "clock_synchronized", agg="", group='"gateway"')
                    + "\n  |> toInt()"
                    + "\n  |> aggregateWindow(every: v.windowPeriod, fn: min, createEmpty: false)",
                    y=24,
                    w=24,
                    thresholds=[(None, "red"), (1, "green")],
                ),
            ],
            zone_var=False,
        ),
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, board in dashboards().items():
        (OUT / f"{name}.json").write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
