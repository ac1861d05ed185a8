"""Simulators: realistic signals, faults, and a virtual SDS011 read through pyserial."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
import serial

from climastream.quantities import Quantity
from firmware_bridge.codecs import decode_payload, stream_decoder
from firmware_bridge.model import Decoded
from firmware_bridge.mqtt.generic_json import mapping_from_dict
from firmware_bridge.simulators import DiurnalTemperature, FakeClock, FaultPlan, Faults, TrafficPm
from firmware_bridge.simulators.lorawan import VirtualLoRaWANDevice
from firmware_bridge.simulators.mqtt_json import STATION_MAPPING, MqttJsonDevice
from firmware_bridge.simulators.runner import Fleet, FleetConfig
from firmware_bridge.simulators.serial_pty import VirtualFramedNode, VirtualPms5003, VirtualSds011

# 2024-07-01 is a Monday; the signals use local time = UTC+2 (Brussels summer)
MONDAY = datetime(2024, 7, 1, tzinfo=UTC)


def test_heat_island_is_largest_at_night() -> None:
    rural = DiurnalTemperature(noise=0.0)
    dense = DiurnalTemperature(noise=0.0, heat_island=9.0)
    rng = random.Random(0)
    at_23 = MONDAY + timedelta(hours=21)  # 23:00 local
    at_11 = MONDAY + timedelta(hours=9)  # 11:00 local
    assert dense.value(at_23, rng) - rural.value(at_23, rng) == 9.0
    assert abs(dense.value(at_11, rng) - rural.value(at_11, rng) - 9.0 * 0.3) < 0.1
    assert rural.value(MONDAY + timedelta(hours=13), rng) > rural.value(
        MONDAY + timedelta(hours=2), rng
    )


def test_pm_has_weekday_rush_hour_peaks() -> None:
    pm = TrafficPm(noise=0.0)
    rng = random.Random(0)
    rush = pm.value(MONDAY + timedelta(hours=6), rng)[0]  # 08:00 local
    night = pm.value(MONDAY + timedelta(hours=1), rng)[0]  # 03:00 local
    sunday_rush = pm.value(MONDAY - timedelta(days=1) + timedelta(hours=6), rng)[0]
    assert rush > 2 * night
    assert night < sunday_rush < rush


def test_faults_stuck_spike_dropout() -> None:
    rng = random.Random(1)
    faults = Faults(dropout=FaultPlan(start=MONDAY, end=MONDAY + timedelta(minutes=1)))
    assert faults.apply((1.0,), None, MONDAY, rng) is None
    assert faults.apply((1.0,), None, MONDAY + timedelta(minutes=1), rng) == (1.0,)
    assert Faults(stuck=FaultPlan()).apply((2.0,), (1.0,), MONDAY, rng) == (1.0,)
    assert Faults(spike=FaultPlan(), spike_factor=10).apply((2.0,), None, MONDAY, rng) == (20.0,)


def test_simulated_sds011_on_a_pty_reads_back_through_pyserial() -> None:
    clock = FakeClock(MONDAY + timedelta(hours=6))
    with VirtualSds011(
        seed=7, clock=clock, faults=Faults(garbage=FaultPlan(probability=0.5))
    ) as device:
        port = serial.Serial(device.port, baudrate=9600, timeout=0.2)
        try:
            truth = []
            for _ in range(20):
                truth.append(device.step())
                clock.advance(1)
            decoder = stream_decoder("sds011")
            decoded = []
            while len(decoded) < 20:
                chunk = port.read(64)
                assert chunk, "the pty went quiet before every frame arrived"
                decoded += [r for r in decoder.feed(chunk) if isinstance(r, Decoded)]
        finally:
            port.close()
    assert [(m.measurements[0].value, m.measurements[1].value) for m in decoded] == [
        t.values for t in truth
    ]
    assert all(m.measurements[0].device_id == "A160" for m in decoded)
    assert decoder.counters["garbage_bytes"] > 0  # the garbage fault fired and was skipped


def test_simulated_pms5003_and_framed_node_decode() -> None:
    clock = FakeClock(MONDAY)
    with VirtualPms5003(seed=3, clock=clock) as pms, VirtualFramedNode(seed=3, clock=clock) as node:
        pms_truth, node_truth = pms.step(), node.step()
        pms_results = stream_decoder("pms5003").feed(pms_truth.wire)
        node_results = stream_decoder("framed").feed(node_truth.wire)
    assert isinstance(pms_results[0], Decoded)
    assert isinstance(node_results[0], Decoded)
    assert tuple(m.value for m in pms_results[0].measurements[:3]) == pms_truth.values
    assert tuple(m.value for m in node_results[0].measurements) == node_truth.values
    assert node_results[0].measurements[0].time == MONDAY


def test_lorawan_device_is_deterministic_and_counts_fcnt() -> None:
    def make() -> VirtualLoRaWANDevice:
        return VirtualLoRaWANDevice("70B3D57ED0000001", seed=5, clock=FakeClock(MONDAY))

    first, second = make(), make()
    a = [first.uplink() for _ in range(3)]
    b = [second.uplink() for _ in range(3)]
    assert a == b
    assert [u[2].f_cnt for u in a if u] == [0, 1, 2]
    assert all(-125 < u[2].rssi < -80 for u in a if u)


def test_mqtt_json_device_matches_its_mapping() -> None:
    device = MqttJsonDevice("ws-1", zone="north", seed=2, clock=FakeClock(MONDAY))
    message = device.message()
    assert message is not None
    topic, document = message
    result = mapping_from_dict(STATION_MAPPING).decode(document, topic)
    assert isinstance(result, Decoded)
    temperature = result.measurements[0]
    assert temperature.device_id == "ws-1"
    assert temperature.metadata["zone"] == "north"
    assert abs(temperature.value - (document["tempF"] - 32) * 5 / 9) < 1e-9
    assert result.unmapped == ("fw",)


SPIKE = Faults(spike=FaultPlan(probability=1.0))


def test_spike_saturates_at_the_limits() -> None:
    rng = random.Random(1)
    limits = ((0.0, 100.0), (-5.0, 5.0))
    assert SPIKE.apply((20.0, -1.0), None, MONDAY, rng, limits) == (100.0, -5.0)
    assert SPIKE.apply((2.0, 0.25), None, MONDAY, rng, limits) == (20.0, 2.5)


def test_lorawan_spike_saturates_humidity_at_the_lpp_full_scale() -> None:
    device = VirtualLoRaWANDevice("70B3D57ED0000001", clock=FakeClock(MONDAY), faults=SPIKE)
    uplink = device.uplink()  # was ValueError: humidity value 550.0 does not fit 1 bytes
    assert uplink is not None
    _, document, truth = uplink
    (result,) = decode_payload("chirpstack", json.dumps(document).encode())
    assert isinstance(result, Decoded), result
    values = {m.quantity: m.value for m in result.measurements}
    assert values[Quantity.RELATIVE_HUMIDITY] == truth.humidity == 127.5
    assert values[Quantity.TEMPERATURE] == truth.temperature


def test_spiked_serial_frames_encode_and_decode() -> None:
    night = FakeClock(MONDAY + timedelta(hours=1))
    with (
        VirtualFramedNode(clock=night, faults=SPIKE) as node,
        VirtualPms5003(signal=TrafficPm(background=40), clock=night, faults=SPIKE) as pms,
        VirtualSds011(signal=TrafficPm(background=800), clock=night, faults=SPIKE) as sds,
    ):
        written = {"framed": node.step(), "pms5003": pms.step(), "sds011": sds.step()}
    assert written["framed"].values is not None
    assert written["framed"].values[1] == 655.35  # humidity saturated, temperature not
    for codec, step in written.items():
        (result,) = stream_decoder(codec).feed(step.wire)
        assert isinstance(result, Decoded), (codec, result)
        assert step.values is not None
        got = [m.value for m in result.measurements[: len(step.values)]]
        assert got == pytest.approx(step.values), codec


class _FailsOnce(VirtualFramedNode):
    def _frame(self, values: tuple[float, ...], when: datetime) -> bytes:
        if self.step_errors == 0:
            raise RuntimeError("simulator bug")
        return super()._frame(values, when)


def test_a_failing_step_is_counted_and_the_device_keeps_running() -> None:
    with _FailsOnce(clock=FakeClock(MONDAY)) as node:
        port = serial.Serial(node.port, baudrate=9600, timeout=5)
        try:
            node.run(0.01)
            decoder = stream_decoder("framed")
            decoded: list[Decoded] = []
            while not decoded:  # the thread died on the first error: this read timed out
                chunk = port.read(64)
                assert chunk, "the device stopped sending"
                decoded += [r for r in decoder.feed(chunk) if isinstance(r, Decoded)]
        finally:
            port.close()
        assert node.step_errors == 1
        assert node._thread is not None
        assert node._thread.is_alive()


def test_a_failing_mqtt_device_is_counted_and_the_others_publish() -> None:
    class Client:
        def __init__(self) -> None:
            self.topics: list[str] = []

        def publish(self, topic: str, payload: str, qos: int) -> None:
            self.topics.append(topic)

    def broken() -> tuple[str, dict[str, object]] | None:
        raise ValueError("simulator bug")

    station = MqttJsonDevice("ws-1", clock=FakeClock(MONDAY))
    fleet = Fleet(FleetConfig())
    client = Client()
    devices = [("broken", 1.0, broken), ("ws-1", 1.0, station.message)]
    due: dict[int, float] = {}
    fleet._publish_due(client, devices, due, 0.0)
    fleet._publish_due(client, devices, due, 1.0)
    assert fleet.errors == {"broken": 2}
    assert client.topics == ["city/centre/stations/ws-1/state"] * 2
    assert fleet.published == 2
