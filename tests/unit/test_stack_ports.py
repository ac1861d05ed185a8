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
