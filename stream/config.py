"""Stream configuration: windows, zones, devices and KPI parameters (YAML, validated).

Loaded once at start-up by the worker and by ``climastream kpi eval``; both must use the
same file for their results to agree. Errors name the offending key.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from climastream.contract import Quantity
from climastream.durations import Duration
from climastream.validation import error_lines
from climastream.yamlfile import YamlFileError, load_yaml
from stream.formulas import DEFAULT_EAQI_TABLE, EAQI_TABLES

_HOUR = timedelta(hours=1)


class StreamConfigError(ValueError):
    """The stream configuration is invalid; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ZoneConfig(_Frozen):
    area_km2: Annotated[float, Field(gt=0)] | None = None


class DeviceConfig(_Frozen):
    """What the device declares: its cadence (one reading per quantity per cadence)."""

    cadence: Duration
    zone: str | None = None
    quantities: tuple[Quantity, ...] = ()

    @field_validator("cadence")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("cadence must be positive")
        return value


class ReferenceConfig(_Frozen):
    """The UHI reference: a device (e.g. the RMI station at Uccle) or a whole zone."""

    device_id: str | None = None
    zone: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ReferenceConfig:
        if (self.device_id is None) == (self.zone is None):
            raise ValueError("give exactly one of reference.device_id or reference.zone")
        return self


class StreamConfig(_Frozen):
    """Everything the KPI definitions need besides the readings themselves."""

    window: Duration = timedelta(minutes=1)  # base tumbling window (statistics & co)
    grace: Duration = timedelta(seconds=5)  # allowed lateness
    #: EAQI averaging period (1 h per the EEA; shorter only for demos)
    eaqi_period: Duration = _HOUR
    #: periods in the PM running mean (24 hourly values per the EEA)
    eaqi_running_periods: Annotated[int, Field(ge=1, le=168)] = 24
    eaqi_table: str = DEFAULT_EAQI_TABLE
    timezone: str = "Europe/Brussels"
    #: local time of the nightly UHI value (23:00 in Brussels' 2022 campaign) and its length
    uhi_night_hour: Annotated[int, Field(ge=0, le=23)] = 23
    uhi_night_window: Duration = _HOUR
    reference: ReferenceConfig | None = None
    zones: dict[str, ZoneConfig] = Field(default_factory=dict)
    devices: dict[str, DeviceConfig] = Field(default_factory=dict)
    default_cadence: Duration = timedelta(minutes=1)
    #: a device not in ``devices`` that sent nothing for this long (event time) is no longer
    #: expected: no completeness-0 KPI for a retired or swapped sensor forever; None: never.
    #: A declared device is expected for as long as it is declared.
    forget_undeclared_after: Duration | None = timedelta(days=7)
    co2e_kg_per_kwh: Annotated[float, Field(ge=0)] = 0.16  # Belgian grid mix, configurable
    bin_threshold_pct: Annotated[float, Field(ge=0, le=100)] = 80.0
    #: KPI ids to compute (empty: all in the registry)
    kpis: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> StreamConfig:
        if self.window <= timedelta(0) or _HOUR % self.window:
            raise ValueError("window must divide one hour (e.g. 10s, 1m, 5m, 15m, 1h)")
        if self.grace < timedelta(0):
            raise ValueError("grace must not be negative")
        if self.forget_undeclared_after is not None and self.forget_undeclared_after < _HOUR:
            raise ValueError("forget_undeclared_after must be at least 1h (or null: never)")
        if self.eaqi_period % self.window or self.uhi_night_window % self.window:
            raise ValueError("eaqi_period and uhi_night_window must be multiples of window")
        if self.eaqi_table not in EAQI_TABLES:
            raise ValueError(
                f"eaqi_table {self.eaqi_table!r} is unknown; known: {sorted(EAQI_TABLES)}"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA zone") from None
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def device_zones(self) -> dict[str, str]:
        """The zone of each device declared with one (it wins over the readings' zone)."""
        return {device_id: d.zone for device_id, d in self.devices.items() if d.zone}

    def cadence_of(self, device_id: str) -> timedelta:
        device = self.devices.get(device_id)
        return device.cadence if device else self.default_cadence

    @classmethod
    def load(cls, path: Path | str | None) -> StreamConfig:
        """Read a YAML file (None: built-in defaults). Raises :class:`StreamConfigError`."""
        if path is None:
            return cls()
        try:
            raw, key_lines = load_yaml(path)
        except YamlFileError as exc:
            raise StreamConfigError(str(exc)) from None
        try:
            return cls.model_validate(raw or {})
        except ValidationError as exc:
            parts = error_lines(exc, key_lines=key_lines, model=cls)
            raise StreamConfigError(f"{path}: " + "; ".join(parts)) from None
