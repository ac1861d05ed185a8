"""The alert engine: pure, deterministic rule evaluation and alert lifecycle.

No Kafka, no Faust, no wall clock: the engine reads and writes two string-keyed mappings
(Faust tables in production, plain dicts in tests) and asks an injected clock for the time.
Each public method returns the :class:`~climastream.contract.Alert` state changes to publish,
in order. Feeding the same inputs at the same clock readings gives the same outputs.

Lifecycle of one alert (one fingerprint = one rule x one scope: zone, device or gateway)::

    (none|resolved) --set--> pending --held for `for`--> firing --clear--> resolved
                              |  \\--clear--> resolved (never notified)
                              \\-- inhibited (gateway down): stays pending, never fires

``firing`` is published as FIRING, ACKNOWLEDGED (someone took it) or SILENCED (someone
muted it); resolution clears both. A value between the ``set`` and ``clear`` levels keeps
the current state (hysteresis). After a resolution, the same alert cannot fire again
before ``renotify`` has passed (it waits in pending), so flapping cannot become a storm.

Inhibition: one gateway outage is one alert. A device alert waits in pending while its
gateway's offline alert is pending or firing. An alert about *missing data* (a stale device,
low completeness: :attr:`~stream.alerts.rules.Rule.about_missing_data`) also waits until the
data it judges was gathered after the gateway came back and had one gateway timeout to
deliver what it buffered, and a stale alert while the gateway itself has not been heard
from since the device should have spoken: a device is only individually silent if its
gateway is demonstrably alive and caught up.

State lives in two mappings, written back once per call (so a Faust table gets one
changelog record per changed key per input record, not one per reading):

- ``alerts``: fingerprint -> :class:`AlertRecord` as a JSON-able dict;
- ``signals``: ``dev|<device>`` (last seen, gateway, zone, location), ``gw|<gateway>``
  (last status, last heard, the newest status's order and the runs it replaced),
  ``ev|<device>|<quantity>`` and ``kev|<kpi scope>`` (recent values, the evidence carried
  in messages) and ``roc|<device>|<quantity>`` (rate history).
"""

from __future__ import annotations

import hashlib
import logging
import string
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from climastream.contract import (
    REPLACED_RUNS_KEPT,
    RUN_START_TOLERANCE,
    Alert,
    AlertAction,
    AlertActionKind,
    AlertState,
    BatchSplit,
    EvidencePoint,
    GatewayStatus,
    KpiValue,
    Location,
    QualityFlag,
    Quantity,
    Reading,
    ReadingBatch,
    SourceState,
    StatusOrder,
)
from stream.alerts.rules import (
    AnomalyRule,
    Direction,
    GatewayOfflineRule,
    RateOfChangeRule,
    Rule,
    RuleSet,
    StaleRule,
    ThresholdRule,
)

log = logging.getLogger(__name__)

__all__ = ["AlertEngine", "AlertRecord", "Condition", "EngineCounters", "fingerprint"]

Clock = Callable[[], datetime]
JsonDict = dict[str, Any]

#: how many recent values an alert carries as evidence
EVIDENCE_POINTS = 5
#: how long a gateway's newest status stands against one of a run that started earlier by
#: the clocks, without gateway rules (with them: the shortest gateway timeout)
STATUS_STALE_AFTER = timedelta(minutes=2)
#: the engine's input (its consumer's fetches) this far behind its clock is stalled: the
#: broker is unreachable or paused, or the engine is not fetching. Faust's fetches wait at
#: most 1.5 s for records, so a live consumer is never this far behind.
INPUT_STALL_AFTER = timedelta(seconds=5)
#: signals key of what the engine knows about its own input
INPUT_KEY = "meta|input"
#: ``input_as_of`` of a consumer that has not fetched yet
NEVER = datetime.min.replace(tzinfo=UTC)
#: resolved records are kept this long beyond ``renotify`` (flap damping needs them), and in
#: any case while a timed silence on them is in force (it covers the alert's next incident)
RESOLVED_RETENTION = timedelta(hours=1)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def fingerprint(rule_id: str, scope: Iterable[tuple[str, str | None]]) -> str:
    """Stable id of one alert: the rule and its scope, hashed (16 hex digits).

    Independent of values and times, so every state change of one incident, and every
    later incident of the same rule on the same zone/device/gateway, share it.
    """
    text = rule_id + "".join(f"|{k}={v}" for k, v in sorted(scope) if v is not None)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Condition(StrEnum):
    SET = "set"  # the rule's condition holds
    CLEAR = "clear"  # it is back past the clear level
    HOLD = "hold"  # between the levels: keep the current state


class Phase(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class AlertRecord:
    """The engine's state for one fingerprint (stored as a JSON-able dict)."""

    fingerprint: str
    rule_id: str
    phase: Phase
    started_at: datetime
    updated_at: datetime
    fire_at: datetime
    clear_since: datetime | None = None
    #: when the last *firing* incident resolved (for the renotify interval)
    resolved_at: datetime | None = None
    acked_by: str | None = None
    silenced: bool = False
    silenced_until: datetime | None = None
    silenced_by: str | None = None
    published: str | None = None
    zone: str | None = None
    device_id: str | None = None
    gateway_id: str | None = None
    kpi_id: str | None = None
    quantity: str | None = None
    unit: str | None = None
    band: str | None = None
    location: JsonDict | None = None
    value: float | None = None
    threshold: float | None = None
    completeness: float | None = None
    score: float | None = None
    #: where the data of the latest observation begins, in the records' own time (a KPI's
    #: window start; a gateway status's time), if not "now" on the engine's clock
    observed_since: datetime | None = None
    evidence: list[list[Any]] = field(default_factory=list)
    #: labels the evaluation adds (e.g. which gateway sources are down)
    labels: dict[str, str] = field(default_factory=dict)

    _TIMES: ClassVar[tuple[str, ...]] = (
        "started_at",
        "updated_at",
        "fire_at",
        "clear_since",
        "resolved_at",
        "silenced_until",
        "observed_since",
    )

    def to_dict(self) -> JsonDict:
        out = asdict(self)
        for name in self._TIMES:
            out[name] = _iso(getattr(self, name))
        out["phase"] = self.phase.value
        return out

    @classmethod
    def from_dict(cls, raw: JsonDict) -> AlertRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        for name in cls._TIMES:
            values[name] = _time(values.get(name))
        values["phase"] = Phase(values["phase"])
        return cls(**values)


@dataclass
class EngineCounters:
    """What the engine did, by outcome (exported as metrics by the Faust wiring)."""

    transitions: dict[str, int] = field(default_factory=dict)
    inhibited: int = 0
    actions_ignored: int = 0

    def count(self, state: str) -> None:
        self.transitions[state] = self.transitions.get(state, 0) + 1


def _fmt(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3g}"


_UNIT_TEXT = {"Cel": "°C", "dB(A)": " dB(A)", "%": "%", "ug/m3": " µg/m³", "1": "", "s": " s"}


def unit_text(unit: str | None) -> str:
    if not unit:
        return ""
    text = _UNIT_TEXT.get(unit)
    return text if text is not None else f" {unit}"


class _Formatter(string.Formatter):
    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        return kwargs.get(key, "?") if isinstance(key, str) else "?"


def render_summary(template: str, record: AlertRecord) -> str:
    """Fill a rule's plain-language template; unknown or missing fields become '?'."""
    where = record.zone or record.gateway_id or record.device_id or "the city"
    if record.device_id and record.zone:
        where = f"{record.zone} ({record.device_id})"
    values = {
        "zone": record.zone or "?",
        "device": record.device_id or "?",
        "gateway": record.gateway_id or "?",
        "value": _fmt(record.value),
        "percent": "?" if record.value is None else f"{record.value * 100:.0f}",
        "threshold": _fmt(record.threshold),
        "unit": unit_text(record.unit),
        "quantity": (record.quantity or "?").replace("_", "."),
        "kpi": record.kpi_id or "?",
        "band": (record.band or "?").replace("_", " "),
        "where": where,
    }
    try:
        text = _Formatter().vformat(template, (), values)
    except (ValueError, IndexError, AttributeError):
        text = template
    text = " ".join(text.split())
    return text[:300] or "Alert"


def _default_summary(rule: Rule) -> str:
    if isinstance(rule, ThresholdRule):
        what = "{kpi}" if rule.source == "kpi" else "{quantity}"
        word = "high" if rule.direction is Direction.ABOVE else "low"
        limit = "at or above" if rule.direction is Direction.ABOVE else "at or below"
        return f"{what} {word} in {{where}}: {{value}}{{unit}} ({limit} {{threshold}}{{unit}})"
    if isinstance(rule, RateOfChangeRule):
        return "{quantity} changing fast in {where}: {value}{unit} per minute"
    if isinstance(rule, StaleRule):
        return "Sensor {device} in {zone} has sent nothing for {value} s"
    if isinstance(rule, GatewayOfflineRule):
        return "Gateway {gateway} out of contact: no status for {value} s"
    return "Unusual {quantity} readings in {where} (model score {value})"


def _kept_order(gateway: JsonDict) -> StatusOrder | None:
    """The order of the newest status a gateway's signal remembers (``order``: its run
    start, uptime, and when it was received), None before its first."""
    kept = gateway.get("order")
    return None if kept is None else StatusOrder(datetime.fromisoformat(kept[0]), kept[1])


class AlertEngine:
    """Evaluates rules against KPIs, readings, gateway status and staff actions.

    ``alerts`` and ``signals`` are the persistent state (see the module docstring); the
    engine never keeps state elsewhere across calls, so a restart that restores both
    mappings resumes exactly where it left off. (It only remembers when it last ticked,
    to notice a tick held up: a restart starts that anew.)

    ``tick_interval``: how often the caller calls :meth:`tick`.
    """

    def __init__(
        self,
        rules: RuleSet,
        alerts: MutableMapping[str, Any],
        signals: MutableMapping[str, Any],
        clock: Clock = _utc_now,
        tick_interval: timedelta = timedelta(seconds=1),
    ) -> None:
        self.rules = rules.enabled
        #: ticks this far apart (or more) mean the engine itself was held up meanwhile
        self._held_up_after = tick_interval + INPUT_STALL_AFTER
        self._last_tick: datetime | None = None  # when :meth:`tick` last judged silence
        self.alerts = alerts
        self.signals = signals
        self.clock = clock
        self.counters = EngineCounters()
        self._kpi_rules = [r for r in self.rules if isinstance(r, ThresholdRule) and r.kpi_id]
        self._reading_rules: list[ThresholdRule | RateOfChangeRule | AnomalyRule] = [
            r
            for r in self.rules
            if (isinstance(r, ThresholdRule) and r.source == "reading")
            or isinstance(r, RateOfChangeRule | AnomalyRule)
        ]
        self._stale_rules = [r for r in self.rules if isinstance(r, StaleRule)]
        self._gateway_rules = [r for r in self.rules if isinstance(r, GatewayOfflineRule)]
        #: a gateway's newest status this old gives way to one of a run that started
        #: earlier by the clocks (StatusOrder): its shortest gateway timeout
        self._status_stale_after = min(
            (r.limit for r in self._gateway_rules), default=STATUS_STALE_AFTER
        )
        self._evidence_quantities = {
            r.quantity for r in self._reading_rules if r.quantity is not None
        }
        self._evidence_all = any(r.quantity is None for r in self._reading_rules)
        self._records: dict[str, AlertRecord] = {}
        self._dirty_records: set[str] = set()
        self._signal_cache: dict[str, Any] = {}
        self._dirty_signals: set[str] = set()
        self._out: list[Alert] = []

    # ------------------------------------------------------------------ public API

    def on_kpi(self, kpi: KpiValue) -> list[Alert]:
        """Evaluate the KPI rules that match ``kpi``."""
        now = self.clock()
        matching = [r for r in self._kpi_rules if self._kpi_matches(r, kpi)]
        if matching:
            scope_key = f"kev|{kpi.kpi_id}|{kpi.zone or ''}|{kpi.device_id or ''}|"
            scope_key += kpi.quantity.value if kpi.quantity else ""
            evidence = self._push_evidence(
                scope_key, kpi.window_end, kpi.value, kpi.device_id, kpi.quantity
            )
            device = self._signal(f"dev|{kpi.device_id}") if kpi.device_id else None
            for rule in matching:
                fp = fingerprint(
                    rule.id,
                    [
                        ("zone", kpi.zone),
                        ("device", kpi.device_id),
                        ("quantity", kpi.quantity.value if kpi.quantity else None),
                    ],
                )
                context = {
                    "zone": kpi.zone or (device or {}).get("zone"),
                    "device_id": kpi.device_id,
                    "gateway_id": (device or {}).get("gateway"),
                    "kpi_id": kpi.kpi_id,
                    "quantity": kpi.quantity.value if kpi.quantity else None,
                    "unit": kpi.unit,
                    "band": kpi.band,
                    "location": (device or {}).get("location"),
                    "value": kpi.value,
                    "threshold": rule.set,
                    "completeness": kpi.completeness,
                    "observed_since": kpi.window_start,
                    "evidence": evidence,
                }
                self._observe(rule, fp, self._threshold_condition(rule, kpi.value), context, now)
        return self._flush()

    def on_batch(self, batch: ReadingBatch | BatchSplit) -> list[Alert]:
        """Track device liveness and evaluate reading rules, in reading order per device."""
        now = self.clock()
        gateway = self._signal(f"gw|{batch.gateway_id}") or {}
        self._set_signal(f"gw|{batch.gateway_id}", {**gateway, "last_heard": _iso(now)})
        latest: dict[str, Reading] = {}
        for reading in batch.readings:
            previous = latest.get(reading.device_id)
            if previous is None or reading.event_time >= previous.event_time:
                latest[reading.device_id] = reading
            if self._reading_rules:
                self._evaluate_reading(reading, now)
        for device_id, reading in latest.items():
            self._set_signal(
                f"dev|{device_id}",
                {
                    "last_seen": _iso(now),
                    "gateway": reading.gateway_id,
                    "zone": reading.zone,
                    "location": reading.location.model_dump() if reading.location else None,
                },
            )
            for rule in self._stale_rules:
                if self._zone_ok(rule, reading.zone):
                    fp = fingerprint(rule.id, [("device", device_id)])
                    self._observe(rule, fp, Condition.CLEAR, {}, now)
        return self._flush()

    def on_gateway_status(self, status: GatewayStatus) -> list[Alert]:
        """Record a gateway's heartbeat; a status saying every source is down fires at once.

        Any status says the gateway is in contact; only its newest
        (:attr:`~climastream.contract.GatewayStatus.order`, not its time) says what state
        it is in: statuses it buffered arrive after its current one.
        """
        now = self.clock()
        key = f"gw|{status.gateway_id}"
        previous = self._signal(key) or {}
        gateway = {**previous, "last_status": _iso(now), "last_heard": _iso(now)}
        newest = self._newest(status, gateway, now)
        # a gateway whose clock is wrong (a Pi after a power cut, before NTP: fake-hwclock's
        # time, hours behind) does not know when it came back
        clock_known = self._clock_known(status, previous, gateway, newest=newest)
        if newest:
            all_down = bool(status.sources) and all(
                state in (SourceState.DOWN, SourceState.DISABLED)
                for state in status.sources.values()
            )
            backlog_since = None
            if status.buffer_depth > 0 and status.buffer_oldest_age_s is not None:
                # readings taken since then may still be in the gateway's buffer
                backlog_since = _iso(now - timedelta(seconds=status.buffer_oldest_age_s))
            gateway.update(all_sources_down=all_down, backlog_since=backlog_since)
        else:
            all_down = bool(previous.get("all_sources_down"))
        self._set_signal(key, gateway)
        for rule in self._gateway_rules:
            condition = Condition.SET if all_down and rule.all_sources_down else Condition.CLEAR
            # no "value": the record keeps how long the gateway was out of contact; the
            # status's own time says when, in the records' time, the gateway was back
            context: JsonDict = {"gateway_id": status.gateway_id, "unit": "s"}
            fp = fingerprint(rule.id, [("gateway", status.gateway_id)])
            if clock_known:
                context["observed_since"] = status.time
            else:
                self._forget_observed_since(fp)
            if condition is Condition.SET and newest:
                down = sorted(status.sources)
                context["labels"] = {"sources_down": ",".join(down)[:300]}
            self._observe(rule, fp, condition, context, now)
        if clock_known:
            self._raise_return(status.gateway_id, status.time, now)
        return self._flush()

    def _newest(self, status: GatewayStatus, gateway: JsonDict, now: datetime) -> bool:
        """Whether ``status`` is its gateway's newest so far; if so, remember its order in
        ``gateway`` (the signal), with the runs it replaced."""
        order = status.order
        newest = _kept_order(gateway)
        replaced = [datetime.fromisoformat(t) for t in gateway.get("replaced", [])]
        if newest is not None:
            stale = now - datetime.fromisoformat(gateway["order"][2]) >= self._status_stale_after
            if not order.is_newer_than(newest, replaced=replaced, newest_stale=stale):
                return False
            if not order.same_run(newest):
                replaced = [*replaced, newest.run_start][-REPLACED_RUNS_KEPT:]
        gateway["order"] = [_iso(order.run_start), order.uptime_s, _iso(now)]
        gateway["replaced"] = [_iso(t) for t in replaced]
        return True

    def _clock_known(
        self, status: GatewayStatus, previous: JsonDict, gateway: JsonDict, *, newest: bool
    ) -> bool:
        """Whether the status's time can say when, in the records' time, the gateway was
        back; remembers in ``gateway`` (the signal) a run whose clock is found behind.

        Not if the gateway says its clock is not synchronized. A gateway that does not say
        (older than ``clock_synchronized``) gives itself away after a power cut: a new run
        (its uptime went down) whose time is earlier than the last run's newest status's
        plus its own uptime started after that status was written, so its clock is behind
        (fake-hwclock's last save), and so it stays for the whole run (until NTP steps
        it: a new start by the clocks, judged anew). A clock behind by less than the
        time since that status goes unnoticed: after a clean shutdown, say.
        """
        if status.clock_synchronized is not None:
            return status.clock_synchronized
        order = status.order
        behind = gateway.get("clock_behind")
        last = _kept_order(previous)
        if newest and last is not None and not order.same_run(last):
            last_time = last.run_start + timedelta(seconds=last.uptime_s)
            earliest = last_time + timedelta(seconds=order.uptime_s) - RUN_START_TOLERANCE
            new_run = order.uptime_s < last.uptime_s
            behind = _iso(order.run_start) if new_run and status.time < earliest else None
            gateway["clock_behind"] = behind
        if behind is None:
            return True
        return not order.same_run(StatusOrder(datetime.fromisoformat(behind), 0.0))

    def _forget_observed_since(self, fp: str) -> None:
        """An open gateway record's status time must not outlive a status without a
        trustworthy one: the outage would end at that older time (see :meth:`_resolve`)."""
        record = self._record(fp)
        if record is not None and record.phase is not Phase.RESOLVED:
            record.observed_since = None
            self._save(record)

    def on_action(self, action: AlertAction) -> list[Alert]:
        """Apply a person's acknowledge / silence / unsilence to a live alert, or a silence
        change to a resolved one still kept (see :meth:`_act_on_resolved`)."""
        now = self.clock()
        record = self._record(action.fingerprint)
        if record is None:
            self.counters.actions_ignored += 1
            return self._flush()
        if record.phase is Phase.RESOLVED:
            if not self._act_on_resolved(record, action, now):
                self.counters.actions_ignored += 1
            return self._flush()
        if action.action is AlertActionKind.ACKNOWLEDGE:
            if record.acked_by:
                self.counters.actions_ignored += 1
                return self._flush()
            record.acked_by = action.actor
        elif action.action is AlertActionKind.SILENCE:
            record.silenced, record.silenced_until = True, action.until
            record.silenced_by = action.actor
        else:
            record.silenced, record.silenced_until, record.silenced_by = False, None, None
        record.updated_at = now
        self._save(record)
        if record.phase is Phase.FIRING:
            self._publish(record, now)
        return self._flush()

    def _act_on_resolved(self, record: AlertRecord, action: AlertAction, now: datetime) -> bool:
        """Apply ``action`` to a resolved record; False if it changes nothing (ignored).

        A resolved record is kept a while (``renotify`` + ``RESOLVED_RETENTION``, and while a
        timed silence on it is in force) and its timed silence covers the alert's next
        incident, so an unsilence lifts that silence, and a timed silence (new, or a changed
        end) starts or moves it. There is nothing to acknowledge, and a silence without an
        end lasts until the incident resolves, which it has. Nothing is published: the alert
        stays resolved; the change shows when the next incident fires (or is silenced).
        """
        if action.action is AlertActionKind.UNSILENCE and record.silenced:
            record.silenced, record.silenced_until, record.silenced_by = False, None, None
        elif (
            action.action is AlertActionKind.SILENCE
            and action.until is not None
            and action.until > now
        ):
            record.silenced, record.silenced_until = True, action.until
            record.silenced_by = action.actor
        else:
            return False
        self._save(record)
        return True

    def tick(self, input_as_of: datetime | None = None) -> list[Alert]:
        """Time-driven work: stale devices, silent gateways, pending timers, silence expiry.

        ``input_as_of``: up to when the engine's own input is known to be current (when its
        consumer last got a fetch response for ``readings`` and ``gateway-status``); None:
        not known, silence is judged on the engine's clock alone. A gateway or device is
        silent only over time in which the engine could have heard it: silence is judged
        up to ``input_as_of``, and after a stall (the input :data:`INPUT_STALL_AFTER`
        behind the clock: a broker outage, a network partition between engine and Kafka)
        from when it resumed on (every gateway has one timeout to be heard again).
        A cloud-side outage therefore pages no one about gateways that were fine.
        """
        now = self.clock()
        judged_at = self._input_time(now, input_as_of)
        for key in list(self.signals.keys()):
            if key.startswith("dev|") and self._stale_rules:
                self._tick_device(key[4:], now, judged_at)
            elif key.startswith("gw|") and self._gateway_rules:
                self._tick_gateway(key[3:], now, judged_at)
        for fp in list(self.alerts.keys()):
            record = self._record(fp)
            if record is None:
                continue
            rule = self._rule(record.rule_id)
            if rule is None:
                continue
            if record.phase is Phase.RESOLVED:
                silenced = record.silenced_until is not None and record.silenced_until > now
                if not silenced and now - record.updated_at > rule.renotify + RESOLVED_RETENTION:
                    self._records.pop(fp, None)
                    self._dirty_records.discard(fp)
                    del self.alerts[fp]
                continue
            if record.silenced and record.silenced_until and record.silenced_until <= now:
                record.silenced, record.silenced_until, record.silenced_by = False, None, None
                record.updated_at = now
                self._save(record)
                if record.phase is Phase.FIRING:
                    self._publish(record, now)
            if record.phase is Phase.PENDING:
                self._observe(rule, fp, Condition.HOLD, {}, now)
            elif record.clear_since is not None:
                self._observe(rule, fp, Condition.CLEAR, {}, now)
        return self._flush()

    @property
    def input_stalled(self) -> bool:
        """Whether the last :meth:`tick` found the engine's input stalled."""
        return bool((self._signal(INPUT_KEY) or {}).get("stalled_since"))

    def _input_time(self, now: datetime, input_as_of: datetime | None) -> datetime:
        """The time up to which silence is judged; notes when the input stalls and resumes.

        A tick held up for longer than a stall (the engine waited to publish through a
        broker outage, or did not run) cannot tell whether its input stalled meanwhile:
        that counts as a resume too, or every gateway whose buffered statuses are still
        on their way would be paged offline at once.
        """
        previous, self._last_tick = self._last_tick, now
        if input_as_of is None:
            return now
        held_up = previous is not None and now - previous >= self._held_up_after
        judged_at = min(now, input_as_of)
        meta = dict(self._signal(INPUT_KEY) or {})
        stalled_since = _time(meta.get("stalled_since"))
        if now - input_as_of >= INPUT_STALL_AFTER:
            if stalled_since is None and input_as_of > NEVER:  # not before the first fetch
                log.warning(
                    "alert engine input stalled: no fetch from Kafka since %s; gateway and "
                    "sensor silence is not judged until it resumes",
                    _iso(input_as_of),
                )
            if stalled_since is None:
                meta["stalled_since"] = _iso(input_as_of)
                self._set_signal(INPUT_KEY, meta)
            return judged_at
        if stalled_since is not None or held_up or "resumed_at" not in meta:
            # resumed (or the first tick of this engine): what was sent meanwhile is still
            # on its way, so silence counts from now
            if stalled_since is not None and stalled_since > NEVER:
                log.warning(
                    "alert engine input resumed after %.0f s stalled",
                    (now - stalled_since).total_seconds(),
                )
            elif held_up and previous is not None:
                log.warning(
                    "alert engine did not tick for %.0f s (held up publishing, or not "
                    "running); gateway and sensor silence counts from now",
                    (now - previous).total_seconds(),
                )
            meta = {"resumed_at": _iso(now)}
            self._set_signal(INPUT_KEY, meta)
        return judged_at

    def _silent_since(self, heard: datetime) -> datetime:
        """``heard``, or when the engine's input last resumed if that is later."""
        resumed = _time((self._signal(INPUT_KEY) or {}).get("resumed_at"))
        return heard if resumed is None or resumed < heard else resumed

    def current(self) -> list[AlertRecord]:
        """Every record the engine holds (for inspection and tests)."""
        return [r for fp in list(self.alerts.keys()) if (r := self._record(fp)) is not None]

    # ------------------------------------------------------------------ evaluation

    def _evaluate_reading(self, reading: Reading, now: datetime) -> None:
        quantity = reading.quantity
        evidence: list[list[Any]] | None = None
        if self._evidence_all or quantity in self._evidence_quantities:
            evidence = self._push_evidence(
                f"ev|{reading.device_id}|{quantity.value}",
                reading.event_time,
                reading.value,
                reading.device_id,
                quantity,
            )
        base = {
            "zone": reading.zone,
            "device_id": reading.device_id,
            "gateway_id": reading.gateway_id,
            "quantity": quantity.value,
            "unit": reading.unit,
            "location": reading.location.model_dump() if reading.location else None,
            "score": reading.score,
            "evidence": evidence or [],
        }
        for rule in self._reading_rules:
            if rule.quantity is not None and rule.quantity is not quantity:
                continue
            if not self._zone_ok(rule, reading.zone):
                continue
            fp = fingerprint(rule.id, [("device", reading.device_id), ("quantity", quantity)])
            if isinstance(rule, ThresholdRule):
                condition = self._threshold_condition(rule, reading.value)
                context = {**base, "value": reading.value, "threshold": rule.set}
            elif isinstance(rule, AnomalyRule):
                flagged = QualityFlag.ANOMALY in reading.quality
                score = reading.score
                if flagged or (score is not None and score >= rule.level):
                    condition = Condition.SET
                elif score is None or score <= rule.clear:
                    condition = Condition.CLEAR
                else:
                    condition = Condition.HOLD
                context = {**base, "value": score, "threshold": rule.level, "unit": "1"}
                if score is None:
                    context.pop("value")
            else:
                rate = self._rate(rule, reading)
                if rate is None:
                    continue
                signed = {"rise": rate, "fall": -rate, "both": abs(rate)}[rule.direction]
                if signed >= rule.limit:
                    condition = Condition.SET
                elif signed <= rule.clear:
                    condition = Condition.CLEAR
                else:
                    condition = Condition.HOLD
                context = {**base, "value": rate, "threshold": rule.limit}
                context["unit"] = f"{reading.unit}/min"
            self._observe(rule, fp, condition, context, now)

    def _rate(self, rule: RateOfChangeRule, reading: Reading) -> float | None:
        """Change per minute between this reading and the oldest one within the window."""
        key = f"roc|{reading.device_id}|{reading.quantity.value}|{rule.id}"
        history = [
            p
            for p in (self._signal(key) or [])
            if reading.event_time - datetime.fromisoformat(p[0]) <= rule.window
        ]
        t = reading.event_time
        step = rule.window / 32
        if history and t - datetime.fromisoformat(history[-1][0]) < step and len(history) > 1:
            history[-1] = [t.isoformat(), reading.value]  # thin: keep the newest in its slot
        else:
            history.append([t.isoformat(), reading.value])
        history = history[-64:]
        self._set_signal(key, history)
        oldest_time = datetime.fromisoformat(history[0][0])
        span = (t - oldest_time).total_seconds()
        if span < rule.window.total_seconds() / 4:
            return None
        return (reading.value - float(history[0][1])) / span * 60.0

    def _tick_device(self, device_id: str, now: datetime, judged_at: datetime) -> None:
        device = self._signal(f"dev|{device_id}")
        if not device or not device.get("last_seen"):
            return
        last_seen = datetime.fromisoformat(device["last_seen"])
        age = judged_at - self._silent_since(last_seen)
        for rule in self._stale_rules:
            if not self._zone_ok(rule, device.get("zone")):
                continue
            limit = rule.limit_for(device_id)
            fp = fingerprint(rule.id, [("device", device_id)])
            if age < limit:
                continue  # CLEAR happens when a reading arrives
            context = {
                "zone": device.get("zone"),
                "device_id": device_id,
                "gateway_id": device.get("gateway"),
                "location": device.get("location"),
                "value": float(int(age.total_seconds())),
                "threshold": limit.total_seconds(),
                "unit": "s",
            }
            self._observe(rule, fp, Condition.SET, context, now)

    def _tick_gateway(self, gateway_id: str, now: datetime, judged_at: datetime) -> None:
        gateway = self._signal(f"gw|{gateway_id}")
        if not gateway or not gateway.get("last_status"):
            return  # a gateway that never reported status is not watched
        age = judged_at - self._silent_since(datetime.fromisoformat(gateway["last_status"]))
        for rule in self._gateway_rules:
            fp = fingerprint(rule.id, [("gateway", gateway_id)])
            silent = age >= rule.limit
            if not silent and not (rule.all_sources_down and gateway.get("all_sources_down")):
                continue  # CLEAR happens when a status arrives
            context = {
                "gateway_id": gateway_id,
                "value": float(int(age.total_seconds())),
                "threshold": rule.limit.total_seconds(),
                "unit": "s",
            }
            self._observe(rule, fp, Condition.SET, context, now)

    # ------------------------------------------------------------------ lifecycle

    def _observe(
        self, rule: Rule, fp: str, condition: Condition, context: JsonDict, now: datetime
    ) -> None:
        record = self._record(fp)
        if condition is Condition.SET:
            opened = record is None or record.phase is Phase.RESOLVED
            if opened:
                record = self._open(rule, fp, record, now)
            assert record is not None
            self._update(record, context, now)
            record.clear_since = None
            self._save(record)
            if record.phase is Phase.PENDING:
                self._maybe_fire(rule, record, context, now)
            if opened and record.phase is Phase.PENDING:
                self._publish(record, now)
            return
        if record is None or record.phase is Phase.RESOLVED:
            return
        if context:
            self._update(record, context, now)
        if condition is Condition.HOLD:
            if record.phase is Phase.PENDING:
                self._maybe_fire(rule, record, context, now)
            else:
                record.clear_since = None
            self._save(record)
            return
        # CLEAR
        if record.phase is Phase.PENDING:
            self._resolve(record, now, was_firing=False)
            return
        record.clear_since = record.clear_since or now
        if now - record.clear_since >= rule.keep_firing_for:
            self._resolve(record, now, was_firing=True)
        else:
            self._save(record)

    def _open(
        self, rule: Rule, fp: str, previous: AlertRecord | None, now: datetime
    ) -> AlertRecord:
        fire_at = now + rule.pending_for
        resolved_at = previous.resolved_at if previous else None
        if resolved_at is not None and now - resolved_at < rule.renotify:
            fire_at = max(fire_at, resolved_at + rule.renotify)
        record = AlertRecord(
            fingerprint=fp,
            rule_id=rule.id,
            phase=Phase.PENDING,
            started_at=now,
            updated_at=now,
            fire_at=fire_at,
            resolved_at=resolved_at,
        )
        if previous and previous.silenced_until and previous.silenced_until > now:
            record.silenced, record.silenced_until = True, previous.silenced_until
            record.silenced_by = previous.silenced_by
        self._records[fp] = record
        return record

    def _maybe_fire(
        self, rule: Rule, record: AlertRecord, context: JsonDict, now: datetime
    ) -> None:
        if now < record.fire_at:
            return
        if self._inhibited(rule, record, now):
            self.counters.inhibited += 1
            return
        record.phase = Phase.FIRING
        record.updated_at = now
        self._save(record)
        self._publish(record, now)

    def _resolve(self, record: AlertRecord, now: datetime, *, was_firing: bool) -> None:
        record.phase = Phase.RESOLVED
        record.updated_at = now
        record.clear_since = None
        if was_firing:
            record.resolved_at = now
        if record.gateway_id and isinstance(self._rule(record.rule_id), GatewayOfflineRule):
            # kept with the gateway, not the record: windows of the outage can reach the
            # engine long after the record is dropped (a stream job catching up)
            key = f"gw|{record.gateway_id}"
            gateway = self._signal(key) or {}
            back = {
                **gateway.get("back", {}),
                record.rule_id: [_iso(record.observed_since), _iso(now)],
            }
            self._set_signal(key, {**gateway, "back": back})
        record.acked_by = None
        if record.silenced_until is None:
            record.silenced, record.silenced_by = False, None
        self._save(record)
        self._publish(record, now)

    def _update(self, record: AlertRecord, context: JsonDict, now: datetime) -> None:
        for name in (
            "zone",
            "device_id",
            "gateway_id",
            "kpi_id",
            "quantity",
            "unit",
            "band",
            "location",
            "value",
            "threshold",
            "completeness",
            "score",
            "observed_since",
        ):
            if context.get(name) is not None:
                setattr(record, name, context[name])
        if context.get("evidence"):
            record.evidence = list(context["evidence"])
        if context.get("labels"):
            record.labels = {**record.labels, **context["labels"]}

    def _inhibited(self, rule: Rule, record: AlertRecord, now: datetime) -> bool:
        """True while the alert may be caused by its gateway's outage (one outage, one alert).

        Every device alert waits while its gateway's offline alert is pending or firing.
        An alert about missing data also waits until the data it judges (a KPI's window;
        for a stale device, now) begins one gateway timeout after the gateway came back:
        the status of a returning gateway can arrive before the readings it buffered, and
        every window overlapping the outage lacks data. The same grace for every kind.

        Both sides of that comparison are on one clock, since the engine may process
        records hours after their time (a Kafka backlog): a KPI's window is in the
        records' time, so it is compared with the gateway's return in the records' time
        (see :meth:`_raise_return`); a stale device's "now", and anything judged in the
        first gateway timeout after the engine saw the return, with the engine's clock.
        A gateway whose statuses of that first timeout all say its clock is not
        synchronized gives no return in the records' time: the engine's clock stands in
        for it (later than the return, never earlier, if the engine is behind: it holds
        more, never less).
        """
        if isinstance(rule, GatewayOfflineRule) or not record.gateway_id or not self._gateway_rules:
            return False
        for gateway_rule in self._gateway_rules:
            gateway_alert = self._record(
                fingerprint(gateway_rule.id, [("gateway", record.gateway_id)])
            )
            if gateway_alert is not None and gateway_alert.phase is not Phase.RESOLVED:
                return True
            if not rule.about_missing_data:
                continue
            # when its latest outage ended (also one that never fired)
            back = self._gateway_back(gateway_rule, record.gateway_id, gateway_alert)
            if back is None:
                continue
            back_in_records, back_on_engine = back
            if now < back_on_engine + gateway_rule.limit:
                return True  # a stale device's "now", and any window judged meanwhile
            since = record.observed_since
            if (
                since is not None
                and since < (back_in_records or back_on_engine) + gateway_rule.limit
            ):
                return True
        if isinstance(rule, StaleRule) and record.device_id:
            gateway = self._signal(f"gw|{record.gateway_id}") or {}
            device = self._signal(f"dev|{record.device_id}") or {}
            heard, seen = gateway.get("last_heard"), device.get("last_seen")
            if heard and seen:
                cadence = rule.limit_for(record.device_id) / rule.missed
                due = datetime.fromisoformat(seen) + cadence  # when it should have spoken
                # the gateway said nothing since the device should have spoken
                if datetime.fromisoformat(heard) < due:
                    return True
                # or the gateway still holds a backlog reaching back before that moment
                backlog = gateway.get("backlog_since")
                return backlog is not None and datetime.fromisoformat(backlog) <= due
        return False

    def _raise_return(self, gateway_id: str, time: datetime, now: datetime) -> None:
        """Within one gateway timeout (engine clock) of a gateway's return, move its return
        in the records' time forward to what a newer status says: its time, less how long
        after the return the engine got it.

        The first status after an uplink outage can be the oldest one the gateway buffered
        (the edge forwards those once its readings are out), stamped in the outage's first
        minute; its current status follows within a status interval.
        """
        key = f"gw|{gateway_id}"
        gateway = self._signal(key) or {}
        back = dict(gateway.get("back", {}))
        for rule in self._gateway_rules:
            kept = back.get(rule.id)
            if kept is None:
                continue
            seen = datetime.fromisoformat(kept[1])
            if now >= seen + rule.limit:
                continue
            candidate = time - (now - seen)
            if kept[0] is None or candidate > datetime.fromisoformat(kept[0]):
                back[rule.id] = [_iso(candidate), kept[1]]
        if back != gateway.get("back", {}):
            self._set_signal(key, {**gateway, "back": back})

    def _gateway_back(
        self, rule: GatewayOfflineRule, gateway_id: str, alert: AlertRecord | None
    ) -> tuple[datetime | None, datetime] | None:
        """When the gateway's latest outage under ``rule`` ended (also one that never
        fired): in the records' time (the time of the status that ended it; None if not
        known) and on the engine's clock. None: no outage known."""
        gateway = self._signal(f"gw|{gateway_id}") or {}
        kept = gateway.get("back", {}).get(rule.id)
        if kept is not None:
            return _time(kept[0]), datetime.fromisoformat(kept[1])
        if alert is None:
            return None
        # state written before the gateway kept it: the resolved record says
        return alert.observed_since, alert.updated_at

    # ------------------------------------------------------------------ helpers

    def _threshold_condition(self, rule: ThresholdRule, value: float) -> Condition:
        if rule.is_set(value):
            return Condition.SET
        if rule.is_clear(value):
            return Condition.CLEAR
        return Condition.HOLD

    def _kpi_matches(self, rule: ThresholdRule, kpi: KpiValue) -> bool:
        if rule.kpi_id != kpi.kpi_id:
            return False
        if rule.quantity is not None and rule.quantity is not kpi.quantity:
            return False
        if rule.scope == "zone" and (kpi.zone is None or kpi.device_id is not None):
            return False
        if rule.scope == "device" and kpi.device_id is None:
            return False
        return self._zone_ok(rule, kpi.zone)

    @staticmethod
    def _zone_ok(rule: Rule, zone: str | None) -> bool:
        return not rule.zones or zone in rule.zones

    def _rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def _push_evidence(
        self,
        key: str,
        time: datetime,
        value: float,
        device_id: str | None,
        quantity: Quantity | None,
    ) -> list[list[Any]]:
        points = list(self._signal(key) or [])
        points.append([time.isoformat(), value, device_id, quantity.value if quantity else None])
        points = sorted(points, key=lambda p: datetime.fromisoformat(p[0]))[-EVIDENCE_POINTS:]
        self._set_signal(key, points)
        return points

    def _record(self, fp: str) -> AlertRecord | None:
        if fp in self._records:
            return self._records[fp]
        raw = self.alerts.get(fp)
        if raw is None:
            return None
        record = AlertRecord.from_dict(raw)
        self._records[fp] = record
        return record

    def _save(self, record: AlertRecord) -> None:
        self._records[record.fingerprint] = record
        self._dirty_records.add(record.fingerprint)

    def _signal(self, key: str) -> Any:
        if key in self._signal_cache:
            return self._signal_cache[key]
        value = self.signals.get(key)
        self._signal_cache[key] = value
        return value

    def _set_signal(self, key: str, value: Any) -> None:
        self._signal_cache[key] = value
        self._dirty_signals.add(key)

    def _publish(self, record: AlertRecord, now: datetime) -> None:
        rule = self._rule(record.rule_id)
        assert rule is not None
        if record.phase is Phase.PENDING:
            state = AlertState.PENDING
        elif record.phase is Phase.RESOLVED:
            state = AlertState.RESOLVED
        elif record.silenced:
            state = AlertState.SILENCED
        elif record.acked_by:
            state = AlertState.ACKNOWLEDGED
        else:
            state = AlertState.FIRING
        if record.published == f"{state.value}@{_iso(record.started_at)}" and state in (
            AlertState.PENDING,
            AlertState.FIRING,
        ):
            return  # this incident already announced this state
        record.published = f"{state.value}@{_iso(record.started_at)}"
        record.updated_at = now
        self._save(record)
        self.counters.count(state.value)
        self._out.append(self._to_alert(rule, record, state))

    def _to_alert(self, rule: Rule, record: AlertRecord, state: AlertState) -> Alert:
        labels = {"kind": rule.kind, **{k: str(v)[:300] for k, v in rule.labels.items()}}
        labels.update(record.labels)
        if record.quantity:
            labels["quantity"] = record.quantity
        if record.band:
            labels["band"] = record.band
        if record.acked_by:
            labels["acknowledged_by"] = record.acked_by
        if record.silenced_by and state is AlertState.SILENCED:
            labels["silenced_by"] = record.silenced_by
            if record.silenced_until:
                labels["silenced_until"] = record.silenced_until.isoformat()
        labels["pending_for_s"] = _fmt(rule.pending_for.total_seconds())
        evidence = tuple(
            EvidencePoint(
                time=datetime.fromisoformat(p[0]),
                value=float(p[1]),
                device_id=p[2],
                quantity=Quantity(p[3]) if p[3] else None,
            )
            for p in record.evidence[-EVIDENCE_POINTS:]
        )
        unit = record.unit
        description = rule.description
        if record.labels.get("sources_down"):
            down = record.labels["sources_down"]
            description = f"The gateway reports every source down: {down}.\n{description}"
        summary = render_summary(rule.summary or _default_summary(rule), record)
        if record.labels.get("sources_down") and isinstance(rule, GatewayOfflineRule):
            # in contact, but every source it reads is down: not "out of contact"
            summary = (
                f"Gateway {record.gateway_id} reports every sensor source down "
                f"({record.labels['sources_down']})"
            )[:300]
        return Alert(
            fingerprint=record.fingerprint,
            rule_id=rule.id,
            state=state,
            severity=rule.severity,
            summary=summary,
            description=description.strip(),
            team=rule.team,
            zone=record.zone,
            device_id=record.device_id,
            gateway_id=record.gateway_id,
            kpi_id=record.kpi_id,
            location=Location(**record.location) if record.location else None,
            value=record.value,
            threshold=record.threshold,
            unit=unit,
            completeness=record.completeness,
            score=record.score,
            started_at=record.started_at,
            updated_at=record.updated_at,
            evidence=evidence,
            labels=labels,
        )

    def _flush(self) -> list[Alert]:
        for fp in self._dirty_records:
            record = self._records.get(fp)
            if record is not None:
                self.alerts[fp] = record.to_dict()
        for key in self._dirty_signals:
            self.signals[key] = self._signal_cache[key]
        self._dirty_records.clear()
        self._dirty_signals.clear()
        # Cached copies are dropped: the mappings are the single source of truth.
        self._records.clear()
        self._signal_cache.clear()
        out, self._out = self._out, []
        return out
