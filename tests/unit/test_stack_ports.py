"""The local stack refuses to adopt a port some other process already serves."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from climastream.stack import Stack, StackConfig, StackError


def test_a_port_in_use_by_someone_else_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(StackConfig(state_dir=tmp_path / ".stack", kafka_port=port))
        with pytest.raises(StackError) as caught:
            stack.up(install=False)
    message = str(caught.value)
    assert f"port {port}" in message
    assert "CLIMASTREAM_KAFKA_PORT" in message
    assert stack.pid("kafka") is None  # nothing was started in its place


def test_a_stack_that_cannot_come_up_stops_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka started, then MQTT's port was taken: 'stack up' failed and left Tansu running,
    which the next 'up' then adopted as part of a stack that never came up."""
    import sys

    def start_kafka(self: Stack) -> None:  # a stand-in process, as the stack runs it
        self._spawn("kafka", [sys.executable, "-c", "import time; time.sleep(60)"])

    monkeypatch.setattr(Stack, "_start_kafka", start_kafka)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        kafka_port = free.getsockname()[1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack = Stack(
            StackConfig(
                state_dir=tmp_path / ".stack",
                kafka_port=kafka_port,
                mqtt_port=taken.getsockname()[1],
            )
        )
        with pytest.raises(StackError, match="mqtt: port"):
            stack.up(install=False)
    assert stack.pid("kafka") is None
    assert not (tmp_path / ".stack" / "kafka.pid").exists()
