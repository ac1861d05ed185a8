"""A command an operator types while Kafka is down (or at another address) says so in one
line, naming the address and what to set: no aiokafka traceback."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def aiokafka_logs_on() -> Iterator[None]:
    """aiokafka's logger as a fresh process has it. setLevel, not assigning ``level``:
    only setLevel clears the loggers' cached levels, so a command run earlier in the
    session (which quiets aiokafka) would hide its lines from the next test."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.NOTSET)
    yield
    logger.setLevel(previous)


@pytest.mark.parametrize(
    "argv",
    [
        ["alerts", "list"],
        ["alerts", "ack", "0d3a263a4f79dcdc"],
        ["alerts", "silence", "0d3a263a4f79dcdc", "--for", "2h"],
        ["alerts", "unsilence", "0d3a263a4f79dcdc"],
        ["alerts", "history", "0d3a263a4f79dcdc"],
        ["tail", "--alerts"],
        ["topics", "create"],
    ],
)
def test_an_unreachable_broker_is_one_line_not_a_traceback(
    argv: list[str],
    nowhere: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    aiokafka_logs_on: None,
) -> None:
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


@pytest.fixture
def service_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """What a long-running cloud service needs to get as far as connecting to Kafka."""
    monkeypatch.setenv("CLIMASTREAM_INFLUX_TOKEN", "t0ken")
    secret = tmp_path / "webhook-secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    alerting = tmp_path / "alerting.yaml"
    alerting.write_text(
        "console_url: http://127.0.0.1:8450/\n"
        "timezone: Europe/Brussels\n"
        "webhooks:\n"
        f"  - {{name: chat, url: 'http://127.0.0.1:9/hook', secret_file: '{secret}'}}\n"
        "contacts: {ops: {webhook: chat}}\n"
        "routes: [{match: {}, notify: [ops]}]\n"
        f"ledger: '{tmp_path / 'ledger.db'}'\n"
    )
    return {
        "sink": ["sink", "run", "--metrics-port", "0"],
        "notify": ["alerts", "notify", "--config", str(alerting)],
    }


@pytest.mark.parametrize("service", ["sink", "notify"])
def test_a_service_that_cannot_reach_kafka_at_start_says_so_in_one_line(
    service: str,
    service_args: dict[str, list[str]],
    nowhere: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exit status 1 (an orchestrator restarts it) and one line: no aiokafka traceback, and
    every client closed (asyncio's 'Unclosed AIOKafkaConsumer' would follow it)."""
    import gc

    assert main([*service_args[service], "--kafka", nowhere]) == 1
    gc.collect()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert f"cannot reach Kafka at {nowhere}; is it running?" in line
    assert [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()] == []
