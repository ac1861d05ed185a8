"""The gateway's /metrics endpoint binds where ``metrics.listen`` says, IPv6 included."""

from __future__ import annotations

import socket
import types
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from climastream.contract import GatewayStatus
from edge.agent import Counters
from edge.config import MetricsConfig
from edge.metrics import AgentCollector, MemoryCollector, resident_split, serve


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


def _fetch(listen: str, url_host: str, collector: AgentCollector) -> str:
    """Serve ``collector`` on ``listen`` (port 0) and GET /metrics from ``url_host``."""
    server = serve(listen, collector)
    try:
        port = server.server_address[1]
        url = f"http://{url_host}:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
@pytest.mark.parametrize("host", ["[::1]", "[::]"])
def test_an_ipv6_listen_address_serves_metrics(host: str) -> None:
    """``metrics.listen: "[::1]:9108"`` passed validation, then `edge run` exited with
    "metrics.listen [::1]:9108: [Errno -2] Name or service not known": the brackets went
    to the socket's name lookup."""
    assert MetricsConfig(listen=f"{host}:9108").listen == f"{host}:9108"
    body = _fetch(f"{host}:0", "[::1]", AgentCollector(_status, _agent()))
    assert "climastream_edge_readings_accepted_total" in body


def test_an_unbracketed_ipv6_address_is_refused_with_the_form_to_use() -> None:
    with pytest.raises(ValueError, match=r"\[::1\]:9108 for an IPv6 address"):
        MetricsConfig(listen="::1:9108")


def _scrape(collector: AgentCollector) -> dict[str, float]:
    """The endpoint's samples, ``name{labels}`` -> value, from a real scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(_fetch("127.0.0.1:0", "127.0.0.1", collector)):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.mark.skipif(resident_split() is None, reason="no /proc/self/status memory split")
def test_the_endpoint_serves_process_memory_and_its_split() -> None:
    """A gateway runs for months on a memory budget: the standard process metrics (resident
    memory, CPU, descriptors) and the anonymous/file split are on the endpoint, as read from
    this very process."""
    samples = _scrape(AgentCollector(_status, _agent()))
    rss = samples["process_resident_memory_bytes"]
    anonymous = samples['climastream_edge_resident_memory_bytes{kind="anonymous"}']
    file_backed = samples['climastream_edge_resident_memory_bytes{kind="file"}']
    assert 0 < anonymous < rss
    assert 0 < file_backed < rss
    assert samples["process_open_fds"] > 0
    assert samples["process_cpu_seconds_total"] > 0
    assert 'python_gc_objects_collected_total{generation="0"}' in samples
    assert "climastream_edge_readings_accepted_total" in samples


def test_resident_split_reads_kilobytes_as_bytes(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(
        "Name:\tpython\nVmRSS:\t   96100 kB\nRssAnon:\t   49876 kB\n"
        "RssFile:\t   46200 kB\nRssShmem:\t      24 kB\nThreads:\t5\n"
    )
    assert resident_split(status) == {
        "anonymous": 49876 * 1024,
        "file": 46200 * 1024,
        "shmem": 24 * 1024,
    }


def test_resident_split_is_none_without_the_split(tmp_path: Path) -> None:
    """A kernel before 4.5 has VmRSS but no RssAnon/RssFile; a non-Linux host no file: the
    collector then serves nothing rather than a made-up zero."""
    old_kernel = tmp_path / "status"
    old_kernel.write_text("Name:\tpython\nVmRSS:\t   96100 kB\n")
    assert resident_split(old_kernel) is None
    assert resident_split(tmp_path / "missing") is None
    assert list(MemoryCollector(lambda: None).collect()) == []
