"""``climastream simulate``: run a fleet of virtual devices from one YAML file.

Serial devices (SDS011, PMS5003, framed-protocol nodes) each get a pseudo-terminal; the
runner links a stable path (``link``) to it, so a gateway config can name the port as it
would name ``/dev/ttyUSB0``. LoRaWAN devices publish ChirpStack or TTS uplinks, and MQTT
JSON stations publish their documents, through a real MQTT broker. Example::

    mqtt: {host: 127.0.0.1, port: 1883}
    serial:
      - {kind: sds011, link: .demo/tty-sds011, zone: centre, period_s: 1, sensor_id: 41312}
      - {kind: framed, link: .demo/tty-node, device_id: node-centre-1, heat_island: 3.0}
    lorawan:
      - {dev_eui: 70b3d57ed0000001, network_server: chirpstack, period_s: 5}
    mqtt_json:
      - {device_id: station-north-1, zone: north, period_s: 2}

Runs until SIGTERM/SIGINT. Faults can be switched on per device (``faults``), e.g.
``{garbage: 0.1, dropout: 0.05, stuck: 0.0, spike: 0.0}`` as per-step probabilities (a
spike saturates at the full scale of the device's frame, see ``signals.Faults``). A device
whose step fails is logged and counted (``Fleet.errors`` by device, ``step_errors`` of a
serial device); it and the other devices keep running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from climastream.validation import error_lines
from climastream.yamlfile import YamlFileError, load_yaml
from firmware_bridge.simulators.lorawan import VirtualLoRaWANDevice
from firmware_bridge.simulators.mqtt_json import MqttJsonDevice
from firmware_bridge.simulators.serial_pty import (
    VirtualFramedNode,
    VirtualPms5003,
    VirtualSds011,
    VirtualSerialDevice,
)
from firmware_bridge.simulators.signals import DiurnalTemperature, FaultPlan, Faults, TrafficPm

log = logging.getLogger(__name__)

Period = Annotated[float, Field(gt=0, le=3600)]
Probability = Annotated[float, Field(ge=0, le=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaultRates(_Frozen):
    """Per-step probability of each fault."""

    garbage: Probability = 0.0
    dropout: Probability = 0.0
    stuck: Probability = 0.0
    spike: Probability = 0.0

    def build(self) -> Faults:
        def plan(p: float) -> FaultPlan | None:
            return FaultPlan(probability=p) if p > 0 else None

        return Faults(
            garbage=plan(self.garbage),
            dropout=plan(self.dropout),
            stuck=plan(self.stuck),
            spike=plan(self.spike),
        )


class SerialSim(_Frozen):
    kind: Literal["sds011", "pms5003", "framed"]
    link: Path
    period_s: Period = 1.0
    seed: int = 0
    zone: str | None = None
    heat_island: float = 0.0  # °C at 23:00, framed nodes only
    pm_background: float = 8.0  # µg/m³, particulate sensors only
    sensor_id: Annotated[int, Field(ge=0, le=0xFFFF)] = 0xA160  # SDS011 only
    device_id: str = "node-1"  # framed nodes only
    faults: FaultRates = FaultRates()


class LoRaWANSim(_Frozen):
    dev_eui: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$")]
    network_server: Literal["chirpstack", "tts"] = "chirpstack"
    application_id: str = "climastream"
    period_s: Period = 5.0
    seed: int = 0
    heat_island: float = 0.0
    faults: FaultRates = FaultRates()


class MqttJsonSim(_Frozen):
    device_id: str
    zone: str = "centre"
    period_s: Period = 2.0
    seed: int = 0
    heat_island: float = 0.0
    faults: FaultRates = FaultRates()


class MqttTarget(_Frozen):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883


class FleetConfig(_Frozen):
    mqtt: MqttTarget = MqttTarget()
    serial: tuple[SerialSim, ...] = ()
    lorawan: tuple[LoRaWANSim, ...] = ()
    mqtt_json: tuple[MqttJsonSim, ...] = ()


def load_fleet(path: Path) -> FleetConfig:
    """Load a fleet file; errors name the key (``serial.0.kind: ...``)."""
    key_lines = None
    try:
        raw, key_lines = load_yaml(path)
        return FleetConfig.model_validate(raw or {})
    except YamlFileError as exc:
        raise ValueError(str(exc)) from None
    except ValidationError as exc:
        lines = [
            f"  {problem}"
            for problem in error_lines(exc, root="", key_lines=key_lines, model=FleetConfig)
        ]
        raise ValueError(f"{path}: invalid simulator fleet:\n" + "\n".join(lines)) from None


def _serial_device(sim: SerialSim) -> VirtualSerialDevice:
    faults = sim.faults.build()
    pm = TrafficPm(background=sim.pm_background)
    if sim.kind == "sds011":
        return VirtualSds011(device_id=sim.sensor_id, signal=pm, seed=sim.seed, faults=faults)
    if sim.kind == "pms5003":
        return VirtualPms5003(signal=pm, seed=sim.seed, faults=faults)
    return VirtualFramedNode(
        device_id=sim.device_id,
        signal=DiurnalTemperature(heat_island=sim.heat_island),
        seed=sim.seed,
        faults=faults,
    )


#: a device's next ``(topic, document)``, None when it sends nothing this step
Producer = Callable[[], tuple[str, dict[str, Any]] | None]


def _without_truth(
    uplink: Callable[[], tuple[str, dict[str, Any], Any] | None],
) -> Producer:
    def produce() -> tuple[str, dict[str, Any]] | None:
        result = uplink()
        return None if result is None else (result[0], result[1])

    return produce


class Fleet:
    """Owns every virtual device of a fleet; :meth:`stop` is idempotent."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.serial: list[tuple[SerialSim, VirtualSerialDevice]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.published = 0
        #: failed steps of the MQTT devices by dev_eui / device_id, each logged (serial
        #: devices count theirs in ``step_errors``)
        self.errors: dict[str, int] = {}

    def start(self) -> None:
        for sim in self.config.serial:
            device = _serial_device(sim)
            sim.link.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                sim.link.unlink()
            sim.link.symlink_to(device.port)
            device.run(sim.period_s)
            self.serial.append((sim, device))
            log.info("serial simulator kind=%s link=%s pty=%s", sim.kind, sim.link, device.port)
        if self.config.lorawan or self.config.mqtt_json:
            thread = threading.Thread(target=self._publish_loop, name="mqtt-sims", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _publish_loop(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="climastream-simulate")
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.connect_async(self.config.mqtt.host, self.config.mqtt.port, keepalive=30)
        client.loop_start()
        lorawan = [
            (
                sim,
                VirtualLoRaWANDevice(
                    dev_eui=sim.dev_eui,
                    network_server=sim.network_server,
                    application_id=sim.application_id,
                    signal=DiurnalTemperature(heat_island=sim.heat_island),
                    seed=sim.seed,
                    faults=sim.faults.build(),
                ),
            )
            for sim in self.config.lorawan
        ]
        stations = [
            (
                sim,
                MqttJsonDevice(
                    device_id=sim.device_id,
                    zone=sim.zone,
                    temperature=DiurnalTemperature(heat_island=sim.heat_island),
                    seed=sim.seed,
                    faults=sim.faults.build(),
                ),
            )
            for sim in self.config.mqtt_json
        ]
        devices: list[tuple[str, float, Producer]] = [
            (lsim.dev_eui, lsim.period_s, _without_truth(device.uplink)) for lsim, device in lorawan
        ]
        devices += [(ssim.device_id, ssim.period_s, station.message) for ssim, station in stations]
        due: dict[int, float] = {}
        try:
            while not self._stop.is_set():
                self._publish_due(client, devices, due, time.monotonic())
                self._stop.wait(0.05)
        finally:
            client.disconnect()
            client.loop_stop()

    def _publish_due(
        self,
        client: Any,
        devices: list[tuple[str, float, Producer]],
        due: dict[int, float],
        now: float,
    ) -> None:
        """Publish the next message of every device that is due; one failing skips a step."""
        for index, (name, period_s, produce) in enumerate(devices):
            if due.get(index, 0.0) > now:
                continue
            due[index] = now + period_s
            try:
                message = produce()
                if message is not None:
                    self._publish(client, message[0], message[1])
            except Exception:  # a bug in one device must not stop the others
                self.errors[name] = self.errors.get(name, 0) + 1
                log.error(
                    "simulated device step failed, skipped device=%s errors=%d",
                    name,
                    self.errors[name],
                    exc_info=self.errors[name] == 1,  # the traceback once per device
                )

    def _publish(self, client: Any, topic: str, document: dict[str, Any]) -> None:
        # QoS 1: paho keeps unacknowledged messages and resends them after a reconnect
        client.publish(topic, json.dumps(document), qos=1)
        self.published += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sim, device in self.serial:
            device.close()
            with contextlib.suppress(FileNotFoundError):
                sim.link.unlink()
        self.serial.clear()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run virtual devices: serial sensors on ptys, LoRaWAN and MQTT devices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="fleet YAML file")
    parser.add_argument("--mqtt-host", help="override mqtt.host")
    parser.add_argument("--mqtt-port", type=int, help="override mqtt.port")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_fleet(args.config)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if args.mqtt_host or args.mqtt_port:
        config = config.model_copy(
            update={
                "mqtt": MqttTarget(
                    host=args.mqtt_host or config.mqtt.host,
                    port=args.mqtt_port or config.mqtt.port,
                )
            }
        )
    fleet = Fleet(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    fleet.start()
    print(
        f"simulate: {len(config.serial)} serial, {len(config.lorawan)} LoRaWAN, "
        f"{len(config.mqtt_json)} MQTT JSON devices running",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        fleet.stop()
    return 0
