"""Virtual MQTT JSON devices: a weather station publishing flat JSON to a topic template.

The document shape matches :data:`STATION_MAPPING`, a generic-JSON mapping config, so the
decoder side of a test or demo uses exactly what an installer would write.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from firmware_bridge.simulators.signals import Clock, DiurnalTemperature, Faults, TrafficPm

#: generic JSON mapping for the simulated station (temperature in °F, as some US kits send)
STATION_MAPPING: dict[str, Any] = {
    "topic": "city/{zone}/stations/{device_id}/state",
    "device_id": "{device_id}",
    "time": "ts",
    "seq": "n",
    "fields": {
        "tempF": {"quantity": "temperature", "unit": "degF"},
        "hum": {"quantity": "relative_humidity", "unit": "%"},
        "air.pm25": {"quantity": "pm2_5", "unit": "ug/m3"},
        "air.pm10": {"quantity": "pm10", "unit": "ug/m3"},
        "wind_kmh": {"quantity": "wind_speed", "unit": "km/h"},
    },
}


@dataclass
class MqttJsonDevice:
    """A weather/air station in one zone; :meth:`message` returns ``(topic, document)``."""

    device_id: str
    zone: str = "centre"
    temperature: DiurnalTemperature = field(default_factory=DiurnalTemperature)
    pm: TrafficPm = field(default_factory=TrafficPm)
    seed: int = 0
    clock: Clock = field(default=lambda: datetime.now(UTC))
    faults: Faults = field(default_factory=Faults)
    n: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._last: tuple[float, ...] | None = None

    def message(self) -> tuple[str, dict[str, Any]] | None:
        """The next message, or None on a dropout fault."""
        when = self.clock()
        celsius = self.temperature.value(when, self.rng)
        pm25, pm10 = self.pm.value(when, self.rng)
        wind = max(0.0, self.rng.gauss(12, 4))
        values = self.faults.apply((celsius, pm25, pm10, wind), self._last, when, self.rng)
        n = self.n
        self.n += 1
        if values is None:
            return None
        self._last = values
        humidity = min(100.0, max(0.0, 85 - 1.8 * (values[0] - 10)))
        document = {
            "n": n,
            "ts": when.isoformat().replace("+00:00", "Z"),
            "tempF": round(values[0] * 9 / 5 + 32, 2),
            "hum": round(humidity, 1),
            "air": {"pm25": round(values[1], 1), "pm10": round(values[2], 1)},
            "wind_kmh": round(values[3], 1),
            "fw": "1.4.2",
        }
        return f"city/{self.zone}/stations/{self.device_id}/state", document
