"""``climastream tail``: a filtered live view of the streams in a terminal (rich).

For operators and installers over SSH: ``climastream tail --zone centre`` prints each
reading of that zone as it arrives; ``--kpi eaqi`` adds KPI values, ``--alerts`` alert state
changes, ``--status`` the gateways' periodic health reports. Filters combine with AND; each
may be repeated (OR within one filter). Reading is group-less: tailing never moves an offset
anything else depends on.

A status shows the gateway's own time, which a Pi gets wrong for hours after a power cut:
one written with an unsynchronized clock says ``clock unsynchronized``, and one older than
the gateway's newest already shown (:class:`~climastream.contract.StatusOrder`, as the
console and the alert engine decide) says ``older`` or, from a run before the newest's, a
status the gateway buffered, ``older: buffered, from an earlier run``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from climastream.contract import (
    Alert,
    ContractError,
    GatewayStatus,
    KpiValue,
    NewestStatus,
    Reading,
    Topics,
    decode,
    decode_batch,
    encode,
)
from climastream.extras import require
from climastream.kafkasec import KafkaSecurity
from climastream.topics import unreachable


class KafkaUnreachable(RuntimeError):
    """No bootstrap server answered; the message says where it looked and what to set."""


@dataclass(frozen=True)
class TailFilter:
    """Which records to show. Empty sets mean "any"."""

    devices: frozenset[str] = frozenset()
    zones: frozenset[str] = frozenset()
    quantities: frozenset[str] = frozenset()
    #: None: KPIs are not shown; empty: every KPI; else those kpi_ids
    kpis: frozenset[str] | None = None
    alerts: bool = False
    readings: bool = True
    #: gateway-status records (a gateway's health: sources, buffer, sent, drops)
    status: bool = False
    gateways: frozenset[str] = frozenset()
    topics: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        topics = []
        if self.readings:
            topics.append(Topics.READINGS.name)
        if self.kpis is not None:
            topics.append(Topics.KPI.name)
        if self.alerts:
            topics.append(Topics.ALERTS.name)
        if self.status:
            topics.append(Topics.GATEWAY_STATUS.name)
        object.__setattr__(self, "topics", tuple(topics))

    def reading(self, reading: Reading) -> bool:
        return (
            (not self.gateways or reading.gateway_id in self.gateways)
            and (not self.devices or reading.device_id in self.devices)
            and (not self.zones or reading.zone in self.zones)
            and (not self.quantities or reading.quantity.value in self.quantities)
        )

    def kpi(self, kpi: KpiValue) -> bool:
        if self.kpis is None:
            return False
        return (
            (not self.kpis or kpi.kpi_id in self.kpis)
            and (not self.devices or kpi.device_id in self.devices)
            and (not self.zones or kpi.zone in self.zones)
            and (
                not self.quantities
                or (kpi.quantity is not None and kpi.quantity.value in self.quantities)
            )
        )

    def alert(self, alert: Alert) -> bool:
        return (
            self.alerts
            and (not self.gateways or alert.gateway_id in self.gateways)
            and (not self.devices or alert.device_id in self.devices)
            and (not self.zones or alert.zone in self.zones)
        )

    def gateway_status(self, status: GatewayStatus) -> bool:
        return self.status and (not self.gateways or status.gateway_id in self.gateways)


_STATE_STYLE = {
    "firing": "bold red",
    "pending": "yellow",
    "acknowledged": "cyan",
    "silenced": "dim",
    "resolved": "green",
}


def format_reading(reading: Reading) -> Any:
    text = require("rich.text", "console")
    flags = f" [{','.join(reading.quality)}]" if reading.quality else ""
    return text.Text.assemble(
        (reading.event_time.strftime("%H:%M:%S.%f")[:-3] + " ", "dim"),
        ("reading ", "blue"),
        (f"{reading.zone or '-':<10} ", "magenta"),
        (f"{reading.device_id:<16} ", "bold"),
        f"{reading.quantity.value:<18} ",
        (f"{reading.value:>10.3f} ", "bold green"),
        reading.unit,
        (flags, "yellow"),
    )


def format_kpi(kpi: KpiValue) -> Any:
    text = require("rich.text", "console")
    scope = kpi.zone or kpi.device_id or "-"
    quantity = kpi.quantity.value if kpi.quantity else ""
    band = f" band={kpi.band}" if kpi.band else ""
    return text.Text.assemble(
        (kpi.window_end.strftime("%H:%M:%S") + "     ", "dim"),
        ("kpi     ", "cyan"),
        (f"{scope:<27} ", "magenta"),
        (f"{kpi.kpi_id} {quantity}".strip().ljust(18) + " ", "bold"),
        (f"{kpi.value:>10.3f} ", "bold green"),
        kpi.unit,
        (f" completeness={kpi.completeness:.2f}{band}", "dim"),
    )


def format_alert(alert: Alert) -> Any:
    text = require("rich.text", "console")
    where = alert.zone or alert.device_id or alert.gateway_id or "-"
    value = ""
    if alert.value is not None:
        value = f" value={alert.value:g}"
        if alert.threshold is not None:
            value += f" threshold={alert.threshold:g}"
        value += f" {alert.unit or ''}"
    return text.Text.assemble(
        (alert.updated_at.strftime("%H:%M:%S") + "     ", "dim"),
        ("alert   ", "red"),
        (f"{alert.state.value:<12} ", _STATE_STYLE.get(alert.state.value, "")),
        (f"{alert.severity.value:<8} ", "bold"),
        (f"{where:<16} ", "magenta"),
        alert.summary,
        (value, "dim"),
        (f" [{alert.fingerprint[:12]}]", "dim"),
    )


class StatusPlace:
    """Where a status stands among those of its gateway already shown."""

    NEWEST = ""
    #: the newest's run, a lower uptime: a status sent again or buffered
    OLDER = "older"
    #: a run the newest replaced, or one that started earlier by the clocks while the newest
    #: still reports: a status buffered before a restart or power cut, sent late
    EARLIER_RUN = "older: buffered, from an earlier run"


@dataclass
class StatusTracker:
    """Each gateway's newest status shown so far, by :class:`StatusOrder` (not by its time).

    ``stale_after``: a newest status received longer ago than this no longer holds back a
    status that started earlier by the clocks (a new run whose clock is further behind),
    as in the console (``stale_after``)."""

    stale_after: timedelta = timedelta(seconds=60)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _newest: dict[str, NewestStatus] = field(default_factory=dict)

    def place(self, status: GatewayStatus) -> str:
        """A :class:`StatusPlace`; remembers ``status`` if it is the gateway's newest."""
        now = self.clock()
        order = status.order
        newest = self._newest.get(status.gateway_id)
        if newest is None:
            self._newest[status.gateway_id] = NewestStatus(order, now)
            return StatusPlace.NEWEST
        if newest.offer(order, now, self.stale_after):
            return StatusPlace.NEWEST
        if order.same_run(newest.order):
            return StatusPlace.OLDER
        return StatusPlace.EARLIER_RUN


def format_status(status: GatewayStatus, place: str = StatusPlace.NEWEST) -> Any:
    """One gateway's health: its sources, buffer, what Kafka took, what was dropped; the
    time marked when the gateway's clock was unsynchronized, the line when ``place`` says
    the status is older than one already shown."""
    text = require("rich.text", "console")
    sources = " ".join(f"{name}:{state.value}" for name, state in sorted(status.sources.items()))
    oldest = status.buffer_oldest_age_s
    buffered = f"buffered={status.buffer_depth}" + (f" (oldest {oldest:.0f}s)" if oldest else "")
    dropped = sum(status.dropped.values())
    problems = [f"dropped={dropped} {dict(sorted(status.dropped.items()))}"] if dropped else []
    if status.decode_errors:
        problems.append(f"decode_errors={dict(sorted(status.decode_errors.items()))}")
    if status.model_errors:
        problems.append(f"model_errors={dict(sorted(status.model_errors.items()))}")
    down = any(state.value != "up" for state in status.sources.values())
    clock = " (clock unsynchronized)" if status.clock_synchronized is False else ""
    return text.Text.assemble(
        (status.time.strftime("%H:%M:%S") + "     ", "dim"),
        ("status  ", "green" if place == StatusPlace.NEWEST else "dim"),
        (f"[{place}] " if place else "", "bold yellow"),
        (f"{status.gateway_id:<16} ", "bold"),
        (sources + " ", "yellow" if down else ""),
        f"{buffered} sent={status.readings_sent_total}",
        ((" " + " ".join(problems)) if problems else "", "yellow"),
        (clock, "bold yellow"),
    )


def _as_json(record: Any) -> str:
    return encode(record).decode()


def render(
    topic: str,
    raw: bytes,
    flt: TailFilter,
    *,
    as_json: bool = False,
    statuses: StatusTracker | None = None,
) -> tuple[list[Any], str]:
    """The lines to print for one record (none if filtered out), and what of the record
    was skipped ("" if nothing). Raises ContractError.

    ``as_json``: each line is the record as JSON, one reading per line for a batch, the
    input ``climastream kpi eval`` reads. ``statuses``: the gateways' newest statuses so
    far, to mark an older one (see :class:`StatusTracker`); without it none is marked.

    Of a ``readings`` record, the readings that satisfy the contract are shown, as every
    consumer of the topic decides (:func:`climastream.contract.decode_batch`): the stream
    stores them and dead-letters the others, which the second value names.
    """
    if topic == Topics.READINGS.name:
        split = decode_batch(raw)
        readings = [r for r in split.readings if flt.reading(r)]
        lines = [_as_json(r) if as_json else format_reading(r) for r in readings]
        return lines, split.dead_letter_error(limit=300) if split.rejected else ""
    if topic == Topics.KPI.name:
        kpi = decode(raw, KpiValue)
        if not flt.kpi(kpi):
            return [], ""
        return [_as_json(kpi) if as_json else format_kpi(kpi)], ""
    if topic == Topics.ALERTS.name:
        alert = decode(raw, Alert)
        if not flt.alert(alert):
            return [], ""
        return [_as_json(alert) if as_json else format_alert(alert)], ""
    if topic == Topics.GATEWAY_STATUS.name:
        status = decode(raw, GatewayStatus)
        if not flt.gateway_status(status):
            return [], ""
        if as_json:
            return [_as_json(status)], ""
        place = statuses.place(status) if statuses is not None else StatusPlace.NEWEST
        return [format_status(status, place)], ""
    return [], ""


async def tail(
    bootstrap_servers: str,
    flt: TailFilter,
    *,
    stop: asyncio.Event,
    backfill: int = 0,
    max_lines: int = 0,
    console: Any = None,
    as_json: bool = False,
    security: KafkaSecurity | None = None,
) -> int:
    """Print matching records until ``stop`` (or ``max_lines``). Returns lines printed.

    ``as_json``: JSON lines on stdout (see :func:`render`) instead of a rich table.
    ``security``: TLS and SASL (default PLAINTEXT)."""
    aiokafka = require("aiokafka", "console")
    rich_console = require("rich.console", "console")
    out = console or rich_console.Console(highlight=False, soft_wrap=True)
    # what records say (device ids, contract errors) is data, never rich markup or emoji
    # codes (a device id may hold ':cool:')
    err = rich_console.Console(stderr=True, highlight=False, markup=False, emoji=False)
    security = security or KafkaSecurity()
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **security.aiokafka_kwargs(),
    )
    printed = 0
    statuses = StatusTracker()
    try:
        try:
            await consumer.start()
        except aiokafka.errors.KafkaConnectionError:
            raise KafkaUnreachable(unreachable(bootstrap_servers, security)) from None
        await consumer.topics()
        partitions = [
            aiokafka.TopicPartition(topic, p)
            for topic in flt.topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            err.print(f"tail: none of the topics {', '.join(flt.topics)} exist")
            return 0
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        begins = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(begins[tp], ends[tp] - backfill))
        for tp in partitions:
            await consumer.position(tp)
        err.print(
            f"tail: following {', '.join(flt.topics)} on {bootstrap_servers} (Ctrl-C to stop)"
        )
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=300, max_records=1000)
            for tp, records in batches.items():
                for record in records:
                    try:
                        lines, skipped = render(
                            tp.topic, record.value, flt, as_json=as_json, statuses=statuses
                        )
                    except ContractError as exc:
                        err.print(f"tail: skipped a bad record on {tp.topic}: {exc}")
                        continue
                    if skipped:
                        err.print(f"tail: skipped bad readings on {tp.topic}: {skipped}")
                    for line in lines:
                        if as_json:
                            sys.stdout.write(line + "\n")
                        else:
                            out.print(line)
                        printed += 1
                        if max_lines and printed >= max_lines:
                            return printed
            sys.stdout.flush()
    finally:
        await consumer.stop()
    return printed
