"""Device simulators that behave like the real thing, for tests, demos and --test modes.

Deterministic: every simulator takes a ``seed`` and a ``clock`` (a callable returning an
aware UTC datetime), so a test can replay exactly the same readings.
"""

from firmware_bridge.simulators.signals import (
    DiurnalTemperature,
    FakeClock,
    FaultPlan,
    Faults,
    TrafficPm,
)

__all__ = ["DiurnalTemperature", "FakeClock", "FaultPlan", "Faults", "TrafficPm"]
