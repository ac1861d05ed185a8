"""Alert rules declared in YAML: what to watch, when to fire, when to clear, who owns it.

A rules file holds ``defaults`` and a list of ``rules``. Every rule has an ``id`` (stable:
it is part of the alert fingerprint), a ``kind``, a severity, a team and the timing knobs:

``for``
    pending duration: the condition must hold this long before the alert fires.
``keep_firing_for``
    the clear condition must hold this long before the alert resolves.
``renotify``
    minimum interval between a resolution and the next firing of the same alert, so a
    signal that flaps across both hysteresis levels still cannot page staff more often.

Kinds: ``threshold`` (on a KPI or on raw readings, with separate ``set`` and ``clear``
levels), ``rate_of_change``, ``stale`` (a device silent for ``missed`` declared cadences),
``gateway_offline`` (no ``gateway-status`` for ``missed`` status intervals, or every source
down) and ``anomaly`` (edge model score, or the ANOMALY quality flag).

Durations accept ``90s``, ``15m``, ``2h``, ``1d``, ISO 8601 (``PT15M``) or seconds.
:func:`load_rules` validates at load time and raises :class:`RulesError` naming the key.
"""

from __future__ import annotations

import fnmatch
import string
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from climastream.contract import AlertSeverity, Quantity
from climastream.durations import Duration, parse_duration
from climastream.validation import unknown_key
from climastream.yamlfile import KeyLines, YamlFileError, load_yaml

__all__ = [
    "AnomalyRule",
    "Direction",
    "Duration",
    "GatewayOfflineRule",
    "RateOfChangeRule",
    "Rule",
    "RuleSet",
    "RulesError",
    "StaleRule",
    "ThresholdRule",
    "load_rules",
    "parse_duration",
]

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.yaml")

#: the stream job's KPI for the share of a device's expected readings that arrived
COMPLETENESS_KPI = "completeness"


class RulesError(ValueError):
    """The rules file is invalid; the message names the file and the offending key."""


RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")]
TeamId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")]


#: what a rule's ``summary`` template may use
SUMMARY_FIELDS = frozenset(
    {
        "zone",
        "device",
        "gateway",
        "value",
        "percent",
        "threshold",
        "unit",
        "quantity",
        "kpi",
        "band",
        "where",
    }
)


class Direction(StrEnum):
    ABOVE = "above"
    BELOW = "below"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class _RuleBase(_Frozen):
    id: RuleId
    severity: AlertSeverity = AlertSeverity.WARNING
    team: TeamId | None = None
    pending_for: Duration = Field(default=timedelta(0), alias="for")
    keep_firing_for: Duration = timedelta(0)
    renotify: Duration = timedelta(minutes=30)
    #: plain-language subject; ``{zone}``, ``{device}``, ``{gateway}``, ``{value}``,
    #: ``{threshold}``, ``{unit}``, ``{quantity}``, ``{kpi}`` are filled in
    summary: Annotated[str, Field(max_length=200)] = ""
    description: Annotated[str, Field(max_length=4000)] = ""
    #: only these zones (empty: all)
    zones: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True

    @property
    def about_missing_data(self) -> bool:
        """Whether the alert says that a device's data did not arrive (a stale device, low
        completeness): what a gateway outage causes for every device behind it, unlike an
        alert on the values of readings that did arrive (buffered ones are real data)."""
        return False

    @model_validator(mode="after")
    def _summary_fields(self) -> _RuleBase:
        try:
            names = {n for _, n, _, _ in string.Formatter().parse(self.summary) if n is not None}
        except ValueError as exc:
            raise ValueError(f"summary is not a valid template: {exc}") from None
        unknown = names - SUMMARY_FIELDS
        if unknown:
            raise ValueError(
                f"summary uses unknown fields {sorted(unknown)}; known: {sorted(SUMMARY_FIELDS)}"
            )
        return self


class ThresholdRule(_RuleBase):
    """Fire when a value crosses ``set``; resolve only once it is back past ``clear``.

    ``source: kpi`` watches KpiValue records with ``kpi_id`` (and ``quantity`` if given),
    one alert per zone or device; ``source: reading`` watches raw readings of ``quantity``,
    one alert per device. ``direction: above`` fires at ``value >= set`` and clears at
    ``value <= clear``; ``below`` is the mirror image. Between the two the state holds.
    """

    kind: Literal["threshold"]
    source: Literal["kpi", "reading"] = "kpi"
    kpi_id: str | None = None
    quantity: Quantity | None = None
    direction: Direction = Direction.ABOVE
    set: float
    clear: float
    #: which KPIs: zone-scoped only, device-scoped only, or both
    scope: Literal["zone", "device", "any"] = "any"

    @model_validator(mode="after")
    def _levels(self) -> ThresholdRule:
        if self.source == "kpi" and not self.kpi_id:
            raise ValueError("a KPI threshold needs kpi_id")
        if self.source == "reading" and self.quantity is None:
            raise ValueError("a reading threshold needs quantity")
        if self.direction is Direction.ABOVE and self.clear > self.set:
            raise ValueError(f"clear ({self.clear}) must be <= set ({self.set}) for 'above'")
        if self.direction is Direction.BELOW and self.clear < self.set:
            raise ValueError(f"clear ({self.clear}) must be >= set ({self.set}) for 'below'")
        return self

    @property
    def about_missing_data(self) -> bool:
        return (
            self.source == "kpi"
            and self.kpi_id == COMPLETENESS_KPI
            and self.direction is Direction.BELOW
        )

    def is_set(self, value: float) -> bool:
        return value >= self.set if self.direction is Direction.ABOVE else value <= self.set

    def is_clear(self, value: float) -> bool:
        return value <= self.clear if self.direction is Direction.ABOVE else value >= self.clear


class RateOfChangeRule(_RuleBase):
    """Fire when a device's ``quantity`` changes faster than ``limit`` units per minute.

    The rate is taken between the newest reading and the oldest kept reading not older
    than ``window`` (so a single noisy sample does not decide). Clears below ``clear``.
    """

    kind: Literal["rate_of_change"]
    quantity: Quantity
    window: Duration = timedelta(minutes=10)
    limit: Annotated[float, Field(gt=0)]
    clear: Annotated[float, Field(ge=0)]
    direction: Literal["rise", "fall", "both"] = "both"

    @model_validator(mode="after")
    def _levels(self) -> RateOfChangeRule:
        if self.clear > self.limit:
            raise ValueError(f"clear ({self.clear}) must be <= limit ({self.limit})")
        return self


class StaleRule(_RuleBase):
    """Fire when a device sent nothing for ``missed`` times its declared cadence.

    ``cadence`` is the default; ``cadences`` maps device-id glob patterns (first match
    wins) to the cadence declared in the gateway config. Only devices seen at least once
    are watched. Inhibited while the device's gateway is offline.
    """

    kind: Literal["stale"]
    cadence: Duration = timedelta(minutes=1)
    cadences: dict[str, Duration] = Field(default_factory=dict)
    missed: Annotated[int, Field(ge=1, le=1000)] = 3

    @property
    def about_missing_data(self) -> bool:
        return True

    def limit_for(self, device_id: str) -> timedelta:
        for pattern, cadence in self.cadences.items():
            if fnmatch.fnmatchcase(device_id, pattern):
                return cadence * self.missed
        return self.cadence * self.missed


class GatewayOfflineRule(_RuleBase):
    """Fire when a gateway sent no status for ``missed`` status intervals, or says every
    source is down. While it is firing (or pending) the alerts of its sensors are inhibited.
    """

    kind: Literal["gateway_offline"]
    status_interval: Duration = timedelta(seconds=30)
    missed: Annotated[int, Field(ge=1, le=1000)] = 3
    all_sources_down: bool = True

    @property
    def limit(self) -> timedelta:
        return self.status_interval * self.missed


class AnomalyRule(_RuleBase):
    """Fire when the edge model's score reaches ``level`` (or the reading carries the
    ANOMALY flag); clear once a reading scores below ``clear`` without the flag."""

    kind: Literal["anomaly"]
    quantity: Quantity | None = None
    level: float
    clear: float

    @model_validator(mode="after")
    def _levels(self) -> AnomalyRule:
        if self.clear > self.level:
            raise ValueError(f"clear ({self.clear}) must be <= level ({self.level})")
        return self


Rule = Annotated[
    ThresholdRule | RateOfChangeRule | StaleRule | GatewayOfflineRule | AnomalyRule,
    Field(discriminator="kind"),
]


class RuleSet(_Frozen):
    rules: tuple[Rule, ...]

    @model_validator(mode="after")
    def _unique(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} appears twice; ids must be unique")
            seen.add(rule.id)
        return self

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)

    def by_id(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


_RULESET = TypeAdapter(RuleSet)


def rules_from_mapping(
    document: Any, *, where: str = "<rules>", key_lines: KeyLines | None = None
) -> RuleSet:
    """Validate a parsed rules document; ``defaults`` are merged into every rule."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise RulesError(f"{where}: expected a mapping with a 'rules' list")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise RulesError(f"{where}: 'defaults' must be a mapping")
    unknown = set(document) - {"defaults", "rules"}
    if unknown:
        raise RulesError(f"{where}: unknown top-level keys {sorted(unknown)}")
    merged = [
        {**defaults, **rule} if isinstance(rule, dict) else rule for rule in document["rules"]
    ]
    try:
        return _RULESET.validate_python({"rules": merged})
    except ValidationError as exc:
        parts = []
        for error in exc.errors(include_url=False)[:5]:
            path = list(error["loc"])
            # rules.3.threshold.set -> rules.3.set (drop the discriminator tag)
            if len(path) > 2 and path[0] == "rules":
                path = path[:2] + path[3:]
            loc = [str(p) for p in path]
            if len(path) > 1 and path[0] == "rules":
                index = int(path[1])
                rule = merged[index] if index < len(merged) else None
                if isinstance(rule, dict) and "id" in rule:
                    loc[1] = f"{loc[1]}({rule['id']})"
            suffix = ""
            if key_lines is not None:
                written = (
                    document["rules"][path[1]] if len(path) > 2 and path[0] == "rules" else None
                )
                from_defaults = (
                    isinstance(written, dict) and path[2] not in written and path[2] in defaults
                )
                suffix = key_lines.suffix(["defaults", *path[2:]] if from_defaults else path)
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = unknown_key(RuleSet, error["loc"])
            parts.append(f"{'.'.join(loc)}: {message}{suffix}")
        raise RulesError(f"{where}: " + "; ".join(parts)) from None


def load_rules(path: Path | str | None = None) -> RuleSet:
    """Load and validate a rules YAML file (default: the shipped European-city defaults)."""
    target = Path(path) if path else DEFAULT_RULES_PATH
    try:
        document, key_lines = load_yaml(target)
    except YamlFileError as exc:
        raise RulesError(str(exc)) from None
    return rules_from_mapping(document, where=str(target), key_lines=key_lines)
