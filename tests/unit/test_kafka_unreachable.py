"""A command an operator types while Kafka is down (or at another address) says so in one
line, naming the address and what to set: no aiokafka traceback."""

from __future__ import annotations

import socket

import pytest

from climastream.cli import main
from climastream.topics import DEFAULT_BOOTSTRAP, unreachable


@pytest.fixture
def nowhere() -> str:
    """A loopback address nothing listens on (a port just released by the kernel)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    "argv",
    [
        ["alerts", "list"],
        ["alerts", "ack", "0d3a263a4f79dcdc"],
        ["alerts", "silence", "0d3a263a4f79dcdc", "--for", "2h"],
        ["alerts", "unsilence", "0d3a263a4f79dcdc"],
        ["alerts", "history", "0d3a263a4f79dcdc"],
        ["tail", "--alerts"],
    ],
)
def test_an_unreachable_broker_is_one_line_not_a_traceback(
    argv: list[str],
    nowhere: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    monkeypatch.setattr(logging.getLogger("aiokafka"), "level", logging.NOTSET)
    assert main([*argv, "--kafka", nowhere]) == 2
    # aiokafka's 'Unable connect to ...' would only repeat the line below
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == []
    err = capsys.readouterr().err
    assert f"{argv[0]}" in err
    assert f"cannot reach Kafka at {nowhere}; is it running?" in err
    assert "--kafka or CLIMASTREAM_KAFKA_BOOTSTRAP" in err


def test_the_default_address_points_at_the_local_stack_settings() -> None:
    """The default is a production broker's port; the demo's stack listens elsewhere."""
    assert 'eval "$(climastream stack env)"' in unreachable(DEFAULT_BOOTSTRAP)
    assert "stack env" not in unreachable("kafka.city.example:9093")
