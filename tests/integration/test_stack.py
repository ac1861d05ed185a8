"""The local stack: real services answer, topics exist, and `down` spares strangers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from climastream.contract import TOPICS
from climastream.stack import Stack, StackConfig, tansu_binary

pytestmark = pytest.mark.integration


def test_services_answer_and_topics_have_their_partitions(stack: Stack) -> None:
    assert stack.kafka_ready()
    assert stack.mqtt_ready()
    assert stack.tsdb_ready()
    out = subprocess.run(
        [str(tansu_binary()), "topic", "list", "--broker", f"tcp://{stack.config.kafka_bootstrap}"],
        capture_output=True,
        text=True,
        check=True,
    )
    partitions = {t["name"]: len(t["partitions"]) for t in json.loads(out.stdout)}
    for spec in TOPICS:
        assert partitions[spec.name] == spec.partitions, spec.name


def test_up_is_idempotent_and_status_reports_up(stack: Stack) -> None:
    pids = {s: stack.pid(s) for s in ("kafka", "mqtt", "tsdb")}
    stack.up()
    assert {s: stack.pid(s) for s in pids} == pids
    assert all(state.startswith("up") for state in stack.status().values())


def test_down_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Stack(StackConfig(state_dir=tmp_path / "s", kafka_port=1, mqtt_port=1, tsdb_port=1))
        other.dir.mkdir(parents=True)
        # a pid file pointing at a stranger (e.g. a recycled pid) must be ignored
        (other.dir / "kafka.pid").write_text(f"{stranger.pid}\n")
        assert other.pid("kafka") is None
        assert other.down() == []
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_paused_broker_keeps_its_topics(stack: Stack) -> None:
    stack.pause("kafka")
    try:
        assert not stack.kafka_ready()
    finally:
        stack.resume("kafka")
    deadline = time.monotonic() + 20
    while not stack.kafka_ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.kafka_ready()
    stack.create_topics()  # nothing to create: the topics survived


def _publish(port: int, text: str) -> bytes:
    """Publish ``text`` (QoS 1, acknowledged) to the topic of :func:`_session`; its bytes."""
    from firmware_bridge.simulators.lorawan import publish_uplinks

    publish_uplinks("127.0.0.1", port, [("stack-test/t", {"m": text})])
    return json.dumps({"m": text}).encode()


def _session(port: int) -> tuple[bool, list[bytes]]:
    """Connect as one persistent client (QoS 1 subscription); (session present, received)."""
    import paho.mqtt.client as mqtt

    present: list[bool] = []
    got: list[bytes] = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="stack-test-session", clean_session=False
    )
    client.on_connect = lambda c, u, flags, rc, p: present.append(flags.session_present)
    client.on_message = lambda c, u, msg: got.append(bytes(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not present and time.monotonic() < deadline:
            time.sleep(0.05)
        client.subscribe("stack-test/t", qos=1)
        time.sleep(1.0)  # queued messages arrive now (their absence is an outcome too)
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0], got


def test_mqtt_sessions_survive_a_broker_restart_but_not_a_new_stack(tmp_path: Path) -> None:
    own = Stack(
        StackConfig(state_dir=tmp_path / "s", kafka_port=39092, mqtt_port=31883, tsdb_port=38428)
    )
    port = own.config.mqtt_port
    own.up(install=False)
    try:
        assert _session(port) == (False, [])  # the broker now keeps a session for it
        queued = _publish(port, "queued before the restart")
        own.stop_service("mqtt")
        own.start_service("mqtt")
        # an outage of the broker alone: the session and the message queued on it survive
        assert _session(port) == (True, [queued])
        _publish(port, "queued before down")
        own.down()
        own.up(install=False)
        # a new stack starts afresh, like Tansu's topics: nothing from the earlier one
        assert _session(port) == (False, [])
    finally:
        own.down()
