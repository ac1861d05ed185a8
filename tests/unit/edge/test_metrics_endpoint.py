"""The gateway's /metrics endpoint binds where ``metrics.listen`` says, IPv6 included."""

from __future__ import annotations

import socket
import types
import urllib.request
from datetime import UTC, datetime

import pytest

from climastream.contract import GatewayStatus
from edge.agent import Counters
from edge.config import MetricsConfig
from edge.metrics import AgentCollector, serve


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _status() -> GatewayStatus:
    return GatewayStatus(
        gateway_id="gw1",
        time=datetime.now(UTC),
        software_version="t",
        uptime_s=1.0,
        buffer_depth=0,
        buffer_bytes=0,
        buffer_capacity_bytes=1,
    )


def _agent() -> object:
    return types.SimpleNamespace(
        sources=[], models=[], kafka_up=True, counters=Counters(), clock_synchronized=None
    )


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
@pytest.mark.parametrize("host", ["[::1]", "[::]"])
def test_an_ipv6_listen_address_serves_metrics(host: str) -> None:
    """``metrics.listen: "[::1]:9108"`` passed validation, then `edge run` exited with
    "metrics.listen [::1]:9108: [Errno -2] Name or service not known": the brackets went
    to the socket's name lookup."""
    assert MetricsConfig(listen=f"{host}:9108").listen == f"{host}:9108"
    server = serve(f"{host}:0", AgentCollector(_status, _agent()))
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert "climastream_edge_readings_accepted_total" in body


def test_an_unbracketed_ipv6_address_is_refused_with_the_form_to_use() -> None:
    with pytest.raises(ValueError, match=r"\[::1\]:9108 for an IPv6 address"):
        MetricsConfig(listen="::1:9108")
