"""InfluxDB line protocol for the contract models: the schema lives here (see SCHEMA.md).

Escaping follows the InfluxDB 2.x line-protocol reference:

* measurement: comma, space and backslash are backslash-escaped;
* tag keys, tag values and field keys: comma, equals sign, space and backslash;
* string field values: double quote and backslash.

Escaping the backslash itself (``\\`` reads back as one backslash) is what makes a value
ending in a backslash, or containing ``\\,``, safe: without it ``dev\\`` followed by the
separating comma would read as an escaped comma and swallow the next tag. Line protocol
cannot carry a newline or carriage return anywhere but inside a quoted string, and many
parsers (VictoriaMetrics among them) split on newlines first, so any control character is
refused with :class:`LineProtocolError`, and so is a double quote outside a string field
value: the spec reads it literally there, but VictoriaMetrics drops such a line. The
contract forbids all of these in identifiers and text already, so a valid record never
meets this; a record that does goes to the dead-letter topic with the reason.

Timestamps are deterministic (event time, window end, alert update time, status time, or
the broker's log-append time of the status record, see :func:`gateway_status_line`), so
writing a record twice overwrites the same point instead of duplicating it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache

from climastream.contract import (
    SAFE_ID_PATTERN,
    Alert,
    AlertState,
    GatewayStatus,
    KpiValue,
    Reading,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ ", "\\": "\\\\"})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\\\\"})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LineProtocolError(ValueError):
    """A value that cannot be written as line protocol (the message says which)."""


class Precision(StrEnum):
    """Timestamp precision sent with every write request (``precision=`` query argument)."""

    NS = "ns"
    US = "us"
    MS = "ms"
    S = "s"


#: microseconds -> integer timestamp in the given precision
_FROM_MICROS = {
    Precision.NS: lambda us: us * 1000,
    Precision.US: lambda us: us,
    Precision.MS: lambda us: us // 1000,
    Precision.S: lambda us: us // 1_000_000,
}


def ns(when: datetime) -> int:
    """Nanoseconds since the epoch (exact for Python's microsecond datetimes)."""
    return ((when - _EPOCH) // _MICROSECOND) * 1000


def timestamp(when: datetime, precision: Precision = Precision.NS) -> int:
    return _FROM_MICROS[precision]((when - _EPOCH) // _MICROSECOND)


def _check(value: str, what: str) -> None:
    if _CONTROL.search(value):
        raise LineProtocolError(f"control character (e.g. newline) in {what} {value[:40]!r}")


def _check_identifier(value: str, what: str) -> None:
    _check(value, what)
    if '"' in value:
        # Literal per the spec, but parsers disagree: VictoriaMetrics drops such a line.
        raise LineProtocolError(f"double quote in {what} {value[:40]!r}")


def escape_key(value: str) -> str:
    """Escape a tag key, tag value or field key. Raises on '', control characters and
    double quotes (quotes are only safe around string field values)."""
    if not value:
        raise LineProtocolError("empty tag key, tag value or field key")
    _check_identifier(value, "tag or key")
    return value.translate(_KEY)


def escape_measurement(value: str) -> str:
    if not value or value.startswith("#"):
        raise LineProtocolError(f"measurement must be non-empty and not start with '#': {value!r}")
    _check_identifier(value, "measurement")
    return value.translate(_MEASUREMENT)


def string_field(value: str) -> str:
    """A quoted string field value."""
    _check(value, "string field")
    return '"' + value.translate(_STRING) + '"'


def _field_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise LineProtocolError(f"non-finite float field {value!r}")
        return repr(value)
    return string_field(str(value))


def line(
    measurement: str,
    tags: dict[str, str | None],
    fields: dict[str, object],
    time: int,
) -> str:
    """Render one point. Tags with no value are left out (line protocol has no null);
    tags are sorted by key, which is what InfluxDB recommends for write speed. Fields with
    value None are left out; at least one field must remain."""
    tag_part = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()) if v)
    field_part = ",".join(
        f"{escape_key(k)}={_field_value(v)}" for k, v in fields.items() if v is not None
    )
    if not field_part:
        raise LineProtocolError(f"{measurement}: a point needs at least one field")
    return f"{escape_measurement(measurement)}{tag_part} {field_part} {time}"


@lru_cache(maxsize=65536)
def _reading_series(gateway: str, device: str, quantity: str, unit: str, zone: str | None) -> str:
    """The escaped series key of a reading. Cached: the tag set is low-cardinality (one per
    device and quantity), and escaping is most of the cost of a line."""
    return line(
        "reading",
        {"device": device, "gateway": gateway, "quantity": quantity, "unit": unit, "zone": zone},
        {"x": 0},
        0,
    ).rsplit(" ", 2)[0]


def reading_line(reading: Reading, precision: Precision = Precision.NS) -> str:
    """Measurement ``reading``; tags device, gateway, quantity, unit, zone; at event time.

    The hot path of the sink (about 1 µs): the series key comes from a cache and the
    fields are formatted directly.
    """
    series = _reading_series(
        reading.gateway_id, reading.device_id, reading.quantity.value, reading.unit, reading.zone
    )
    fields = f"value={reading.value!r},seq={reading.seq}i"
    if reading.score is not None:
        fields += f",score={reading.score!r}"
    if reading.model_id is not None:
        fields += f",model_id={string_field(reading.model_id)}"
    if reading.quality:
        fields += f",quality={string_field(','.join(reading.quality))}"
    return f"{series} {fields} {timestamp(reading.event_time, precision)}"


def kpi_line(kpi: KpiValue, precision: Precision = Precision.NS) -> str:
    fields: dict[str, object] = {
        "value": kpi.value,
        "sample_count": kpi.sample_count,
        "completeness": kpi.completeness,
        "window_start": ns(kpi.window_start),
        "model_ids": ",".join(kpi.model_ids) or None,
    }
    for key, text in sorted(kpi.attributes.items()):
        fields[f"attr_{key}"] = text
    return line(
        "kpi",
        {
            "kpi": kpi.kpi_id,
            "version": kpi.kpi_version,
            "zone": kpi.zone,
            "device": kpi.device_id,
            "quantity": kpi.quantity.value if kpi.quantity else None,
            "unit": kpi.unit,
            "band": kpi.band,
        },
        fields,
        timestamp(kpi.window_end, precision),
    )


#: labels are free text; one becomes a tag only if it is a safe id like the others
_safe_id = re.compile(SAFE_ID_PATTERN).fullmatch


def alert_line(alert: Alert, precision: Precision = Precision.NS) -> str:
    """One point per state change, in the alert's own series.

    One alert (fingerprint) is exactly one series: the tags are the rule and what the
    fingerprint is made of (the scope: a zone and/or device with a KPI and quantity, a
    device with a quantity, or a gateway), so two alerts changing state in the same
    instant never share a point, and one alert's states follow each other in one series:
    ``last(active)`` per series, summed, is the number of ongoing alerts. What can change
    while the alert lasts is a field, never a tag, or it would start a second series and
    leave the first at active=1: the rule's severity and team (the rules file can be
    edited), and for a device alert the gateway its data comes through (unknown until the
    device is first heard, and a device can move) and, unless a KPI's zone is part of the
    fingerprint, the device's zone.
    """
    quantity = alert.labels.get("quantity")
    device_alert = alert.device_id is not None
    zone_in_scope = not device_alert or alert.kpi_id is not None
    return line(
        "alert",
        {
            "rule": alert.rule_id,
            "zone": alert.zone if zone_in_scope else None,
            "device": alert.device_id,
            "gateway": None if device_alert else alert.gateway_id,
            "kpi": alert.kpi_id,
            "quantity": quantity if quantity and _safe_id(quantity) else None,
        },
        {
            # acknowledged and silenced alerts are still ongoing incidents; only resolved ends one
            "active": 0 if alert.state is AlertState.RESOLVED else 1,
            "state": alert.state.value,
            "fingerprint": alert.fingerprint,
            "summary": alert.summary,
            "value": alert.value,
            "threshold": alert.threshold,
            "severity": alert.severity.value,
            "team": alert.team,
            "device_zone": alert.zone if device_alert else None,
            "device_gateway": alert.gateway_id if device_alert else None,
        },
        timestamp(alert.updated_at, precision),
    )


def gateway_status_line(
    status: GatewayStatus,
    precision: Precision = Precision.NS,
    appended_at: datetime | None = None,
) -> str:
    """One point per status, at the status's time, the gateway's clock.

    A Pi boots after a power cut with fake-hwclock's time, hours behind, and says so
    (``clock_synchronized`` false): its statuses would land before the last one of the run
    before the cut, and a "last value" panel would show the old run until NTP syncs. Such
    a status is written at ``appended_at`` instead when given: the time the broker wrote
    the record (a topic with ``message.timestamp.type=LogAppendTime``), stored with it, so
    a replay writes the same point. The gateway's own time is the field ``gateway_time``
    (ns), whether its clock was synchronized ``clock_synchronized`` (absent: unknown)."""
    at = status.time
    if status.clock_synchronized is False and appended_at is not None:
        at = appended_at
    fields: dict[str, object] = {
        "buffer_depth": status.buffer_depth,
        "buffer_bytes": status.buffer_bytes,
        "buffer_capacity_bytes": status.buffer_capacity_bytes,
        "buffer_oldest_age_s": status.buffer_oldest_age_s,
        "outage_capacity_hours": status.outage_capacity_hours,
        "readings_accepted_total": status.readings_accepted_total,
        "readings_sent_total": status.readings_sent_total,
        "uptime_s": status.uptime_s,
        "software_version": status.software_version,
        "clock_synchronized": status.clock_synchronized,
        "gateway_time": ns(status.time),
    }
    for reason, count in sorted(status.dropped.items()):
        fields[f"dropped_{reason}"] = count
    for reason, count in sorted(status.decode_errors.items()):
        fields[f"decode_errors_{reason}"] = count
    for source, state in sorted(status.sources.items()):
        fields[f"source_up_{source}"] = 1 if state.value == "up" else 0
    for model, errors in sorted(status.model_errors.items()):
        fields[f"model_errors_{model}"] = errors
    for model, latency in sorted(status.model_latency_ms.items()):
        fields[f"model_latency_ms_{model}"] = latency
    return line("gateway_status", {"gateway": status.gateway_id}, fields, timestamp(at, precision))
