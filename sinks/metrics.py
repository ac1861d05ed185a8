"""Prometheus metrics of the sink (one registry per runner, injected, so tests stay isolated)."""

from __future__ import annotations

from typing import Any

from climastream.extras import require


class SinkMetrics:
    """Counters a platform engineer alerts on. Names are ``climastream_sink_*``.

    * ``points_written_total{bucket}``: points the database acknowledged;
    * ``batches_total{bucket}``: acknowledged write requests;
    * ``write_retries_total{reason}``: backpressure (429/503), transport, server (5xx);
    * ``dead_letters_total{reason}``: contract (undecodable record), partial-batch (the
      readings of a readings record that failed the contract alone; the rest is written),
      rejected (the database refused the line);
    * ``dead_letter_readings_total{reason}``: readings in partial-batch dead letters
      (reason contract);
    * ``records_total{topic}``: Kafka records consumed;
    * ``consumer_lag{topic,partition}``: high watermark minus committed offset;
    * ``paused``: 1 while consumption is paused because writes are pending;
    * ``write_seconds``: duration of acknowledged write requests.
    """

    def __init__(self, registry: Any | None = None) -> None:
        prom = require("prometheus_client", "sinks")
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        ns = "climastream_sink"
        kw = {"namespace": ns, "registry": self.registry}
        self.points = prom.Counter("points_written", "points acknowledged", ["bucket"], **kw)
        self.batches = prom.Counter("batches", "acknowledged write requests", ["bucket"], **kw)
        self.retries = prom.Counter("write_retries", "retried write requests", ["reason"], **kw)
        self.dead_letters = prom.Counter(
            "dead_letters", "records or lines sent to the dead-letter topic", ["reason"], **kw
        )
        self.dead_letter_readings = prom.Counter(
            "dead_letter_readings",
            "readings dead-lettered one by one from a readings record whose others were written",
            ["reason"],
            **kw,
        )
        self.records = prom.Counter("records", "Kafka records consumed", ["topic"], **kw)
        self.commits = prom.Counter("commits", "offset commits after a database ack", **kw)
        self.lag = prom.Gauge(
            "consumer_lag", "high watermark minus committed offset", ["topic", "partition"], **kw
        )
        self.paused = prom.Gauge("paused", "1 while consumption is paused", **kw)
        self.write_seconds = prom.Histogram(
            "write_seconds", "duration of acknowledged write requests", **kw
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (tests, the CLI summary); 0 if never set."""
        sample = self.registry.get_sample_value(name, labels)
        return float(sample or 0.0)

    def serve(self, host: str, port: int) -> Any:
        """Start the /metrics HTTP endpoint in a thread; returns the server (``shutdown()``)."""
        prom = require("prometheus_client", "sinks")
        server, _thread = prom.start_http_server(port, addr=host, registry=self.registry)
        return server
