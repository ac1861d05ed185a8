"""Prometheus metrics for the gateway, collected at scrape time from the agent's state.

Nothing is counted twice and the hot path pays nothing: the collector reads the same
counters the GatewayStatus carries (one snapshot per scrape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from climastream.contract import GatewayStatus, SourceState

log = logging.getLogger(__name__)


class AgentCollector:
    """A prometheus_client collector over a status snapshot and per-source extras."""

    def __init__(self, snapshot: Callable[[], GatewayStatus], agent: Any) -> None:
        self._snapshot = snapshot
        self._agent = agent

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._snapshot()
        prefix = "climastream_edge_"
        yield CounterMetricFamily(
            prefix + "readings_accepted", "readings made durable", status.readings_accepted_total
        )
        yield CounterMetricFamily(
            prefix + "readings_sent", "readings acknowledged by Kafka", status.readings_sent_total
        )
        dropped = CounterMetricFamily(prefix + "dropped", "readings dropped", labels=["reason"])
        for reason, count in status.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        decode = CounterMetricFamily(
            prefix + "decode_errors", "undecodable input", labels=["reason"]
        )
        for reason, count in status.decode_errors.items():
            decode.add_metric([reason], count)
        yield decode
        yield GaugeMetricFamily(prefix + "buffer_depth", "readings buffered", status.buffer_depth)
        yield GaugeMetricFamily(prefix + "buffer_bytes", "bytes buffered", status.buffer_bytes)
        yield GaugeMetricFamily(
            prefix + "buffer_capacity_bytes", "buffer bound", status.buffer_capacity_bytes
        )
        yield GaugeMetricFamily(
            prefix + "buffer_store_failing",
            "1 while the buffer refuses new readings (disk full, I/O error)",
            1.0 if getattr(self._agent, "store_failing", False) else 0.0,
        )
        yield GaugeMetricFamily(
            prefix + "buffer_oldest_age_seconds",
            "age of the oldest buffered reading",
            status.buffer_oldest_age_s or 0.0,
        )
        if status.outage_capacity_hours is not None:
            yield GaugeMetricFamily(
                prefix + "outage_capacity_hours",
                "hours of uplink outage the buffer absorbs at the current rate",
                status.outage_capacity_hours,
            )
        states = GaugeMetricFamily(
            prefix + "source_state", "1 for the current state", labels=["source", "state"]
        )
        reconnects = CounterMetricFamily(
            prefix + "source_reconnects", "device reconnects", labels=["source"]
        )
        for source in self._agent.sources:
            for state in SourceState:
                states.add_metric([source.name, state.value], 1.0 if source.state is state else 0)
            reconnects.add_metric([source.name], getattr(source, "reconnects", 0))
        yield states
        yield reconnects
        latency = GaugeMetricFamily(
            prefix + "model_latency_seconds", "last batch run", labels=["model"]
        )
        failures = CounterMetricFamily(
            prefix + "model_failures", "model failures", labels=["model", "stage"]
        )
        rows = CounterMetricFamily(prefix + "model_rows", "rows scored", labels=["model"])
        for model in self._agent.models:
            if model.last_latency_ms is not None:
                latency.add_metric([model.id], model.last_latency_ms / 1000.0)
            for stage, count in model.failures.items():
                failures.add_metric([model.id, stage], count)
            rows.add_metric([model.id], model.rows)
        yield latency
        yield failures
        yield rows
        yield GaugeMetricFamily(
            prefix + "kafka_up",
            "1 if the last send succeeded",
            1.0 if self._agent.kafka_up else 0.0,
        )
        yield CounterMetricFamily(
            prefix + "kafka_send_failures", "failed sends", self._agent.counters.send_failures
        )
        yield CounterMetricFamily(
            prefix + "readings_clock_unsynced",
            "readings stamped by the gateway while its clock was not synchronized (flagged)",
            self._agent.counters.clock_unsynced,
        )
        synced = getattr(self._agent, "clock_synchronized", None)
        if synced is not None:  # absent where the gateway cannot tell
            yield GaugeMetricFamily(
                prefix + "clock_synchronized",
                "1 if the gateway's wall clock is synchronized (NTP), as timedatectl says",
                1.0 if synced else 0.0,
            )


def status_kib(status: Path, names: Iterable[str]) -> dict[str, int]:
    """The ``names`` lines of a ``/proc/<pid>/status`` file that it has ("RssAnon:  49876
    kB" -> 49876), in KiB. Raises OSError if the file cannot be read."""
    wanted = set(names)
    found: dict[str, int] = {}
    for line in status.read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            found[name] = int(value.split()[0])
    return found


#: the resident-memory lines of /proc/<pid>/status and the ``kind`` label of each
_RESIDENT_KINDS = {"RssAnon": "anonymous", "RssFile": "file", "RssShmem": "shmem"}


def resident_split(status: Path = Path("/proc/self/status")) -> dict[str, int] | None:
    """The process's resident memory by kind, in bytes, from ``/proc/self/status``:
    anonymous (heaps, stacks: only swap can take it back), file (mapped files, mostly
    library code the kernel may drop and read back) and shmem (shared memory, tmpfs); they
    add up to VmRSS. None where there is no such file (not Linux) or the kernel predates
    the split (4.5)."""
    try:
        kib = status_kib(status, _RESIDENT_KINDS)
    except OSError:
        return None
    if len(kib) < len(_RESIDENT_KINDS):
        return None
    return {kind: kib[name] * 1024 for name, kind in _RESIDENT_KINDS.items()}


class MemoryCollector:
    """``climastream_edge_resident_memory_bytes{kind}``: the split behind the standard
    ``process_resident_memory_bytes``, read at scrape time.

    The gateway's memory budget is mostly a question of the anonymous part: the
    file-backed part (about 46 MB with both models, most of it onnxruntime's library)
    stays flat, while a leak or heap fragmentation shows as anonymous memory creeping.
    """

    def __init__(self, read: Callable[[], dict[str, int] | None] = resident_split) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        split = self._read()
        if split is None:  # not Linux: the process_ metrics are all there is
            return
        family = GaugeMetricFamily(
            "climastream_edge_resident_memory_bytes",
            "resident memory by kind: anonymous (heaps; only swap takes it back), file "
            "(mapped library pages the kernel can drop and read back) and shmem",
            labels=["kind"],
        )
        for kind, size in split.items():
            family.add_metric([kind], size)
        yield family


def serve(listen: str, collector: AgentCollector) -> Any:
    """Start the /metrics endpoint on ``host:port`` in a daemon thread; returns the server.

    Besides the agent's own metrics it serves the standard ``process_*`` (resident memory,
    CPU seconds, open file descriptors), ``python_gc_*`` and ``python_info`` metrics, as
    the default prometheus_client registry would, and the resident memory split
    (:class:`MemoryCollector`): a gateway runs for months, and memory creeping or a
    descriptor leak shows there first. All are read at scrape time.

    An IPv6 address is written in brackets (``[::1]:9108``, ``[::]:9108``), as in a URL;
    the socket is given it without them (with them, the name lookup fails).
    """
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
        start_http_server,
    )

    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    registry = CollectorRegistry()
    registry.register(collector)
    registry.register(MemoryCollector())
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    log.info("metrics endpoint listen=%s", listen)
    return server
