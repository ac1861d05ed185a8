"""Build hardware and network sources from their config (imports their deps lazily)."""

from __future__ import annotations

from edge.config import MqttSourceConfig, SerialSourceConfig, SimulatedSourceConfig
from edge.sources import Source


def build_source(
    config: SimulatedSourceConfig | SerialSourceConfig | MqttSourceConfig, gateway_id: str = "gw"
) -> Source:
    if isinstance(config, SerialSourceConfig):
        from edge.sources.serial_source import SerialSource

        return SerialSource(config)
    if isinstance(config, MqttSourceConfig):
        from edge.sources.mqtt_source import MqttSource

        return MqttSource(config, gateway_id=gateway_id)
    from edge.sources.simulated import SimulatedSource

    return SimulatedSource(config)
