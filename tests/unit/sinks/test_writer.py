"""InfluxWriter against a fake InfluxDB (aiohttp test server) and BatchWriter's retry and
bisection logic against a scripted writer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from sinks.errors import (
    AuthError,
    BackpressureError,
    FatalWriteError,
    PartialWriteError,
    ServerError,
    TransportError,
)
from sinks.influx import BatchWriter, InfluxWriter, WriteAborted, parse_retry_after
from sinks.lineprotocol import Precision
from sinks.metrics import SinkMetrics


class FakeInflux:
    """Records requests; answers with the next scripted (status, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str], str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        # aiohttp's server undoes Content-Encoding: gzip itself; Content-Length is the wire size.
        body = await request.read()
        self.requests.append(
            {
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": body,
                "wire_bytes": request.content_length,
            }
        )
        status, headers, text = self.script.pop(0) if self.script else (204, {}, "")
        return web.Response(status=status, headers=headers, text=text or None)


@pytest.fixture
async def influx() -> AsyncIterator[tuple[FakeInflux, str]]:
    fake = FakeInflux()
    app = web.Application()
    app.router.add_post("/api/v2/write", fake.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_write_sends_gzip_line_protocol_with_precision_and_token(
    influx: tuple[FakeInflux, str],
) -> None:
    fake, url = influx
    async with InfluxWriter(url, "city", SecretStr("s3cret"), precision=Precision.MS) as writer:
        await writer.write("raw", ["m v=1 1", "m v=2 2"])
    (req,) = fake.requests
    assert req["body"] == b"m v=1 1\nm v=2 2"
    assert req["headers"]["Content-Encoding"] == "gzip"
    assert req["headers"]["Authorization"] == "Token s3cret"
    assert req["query"] == {"org": "city", "bucket": "raw", "precision": "ms"}


async def test_large_payload_is_gzipped_in_a_thread_and_intact(
    influx: tuple[FakeInflux, str],
) -> None:
    fake, url = influx
    lines = [f"reading,device=d{i % 50} value={i}.5,seq={i}i {i}" for i in range(5000)]
    async with InfluxWriter(url, "city", SecretStr("")) as writer:
        await writer.write("raw", lines)
    assert fake.requests[0]["body"].decode().split("\n") == lines
    assert fake.requests[0]["wire_bytes"] < len(fake.requests[0]["body"]) / 4  # compressed
    assert "Authorization" not in fake.requests[0]["headers"]


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"Retry-After": "7"}, BackpressureError, 7.0),
        (503, {}, BackpressureError, None),
        (500, {}, ServerError, None),
        (400, {}, PartialWriteError, None),
        (422, {}, PartialWriteError, None),
        (413, {}, PartialWriteError, None),
        (404, {}, FatalWriteError, None),
        (401, {}, AuthError, None),
        (403, {}, AuthError, None),
    ],
)
async def test_status_codes_become_typed_errors(
    influx: tuple[FakeInflux, str],
    status: int,
    headers: dict[str, str],
    error: type[Exception],
    retry_after: float | None,
) -> None:
    fake, url = influx
    fake.script.append((status, headers, '{"code":"x","message":"nope"}'))
    async with InfluxWriter(url, "city", SecretStr("t")) as writer:
        with pytest.raises(error) as info:
            await writer.write("raw", ["m v=1 1"])
    exc: Any = info.value
    assert exc.status == status
    if isinstance(exc, BackpressureError):
        assert exc.retry_after == retry_after
        assert exc.retriable
    if isinstance(exc, AuthError):
        message = str(exc)
        for needle in ("token", "org 'city'", "bucket 'raw'"):
            assert needle in message
        assert not exc.retriable


async def test_connection_refused_is_a_retriable_transport_error() -> None:
    async with InfluxWriter("http://127.0.0.1:9", "city", SecretStr("")) as writer:
        with pytest.raises(TransportError) as info:
            await writer.write("raw", ["m v=1 1"])
    assert info.value.retriable


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("2.5", lambda: now) == 2.5
    assert parse_retry_after("Wed, 01 Jul 2026 12:00:30 GMT", lambda: now) == 30.0
    assert parse_retry_after("garbage", lambda: now) is None
    assert parse_retry_after(None, lambda: now) is None


# --------------------------------------------------------------------------- BatchWriter


class ScriptedWriter:
    """Fails the first calls as scripted; refuses any batch holding a line with 'BAD'."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.failures = failures or []
        self.calls: list[list[str]] = []
        self.stored: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, bucket: str, lines: Sequence[str]) -> None:
        self.calls.append(list(lines))
        if self.failures:
            raise self.failures.pop(0)
        if any("BAD" in line for line in lines):
            raise PartialWriteError("HTTP 400: field type conflict", status=400, body="conflict")
        self.stored.extend(lines)


async def test_retries_honour_retry_after_then_back_off_exponentially() -> None:
    writer = ScriptedWriter(
        [
            BackpressureError("slow down", status=429, retry_after=3.0),
            TransportError("refused"),
            ServerError("boom", status=500),
        ]
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    metrics = SinkMetrics()
    batch = BatchWriter(
        writer, metrics, retry_initial_s=1.0, retry_max_s=60.0, jitter=lambda: 0.5, sleep=sleep
    )
    result = await batch.write("raw", ["a", "b"])
    assert result.written == 2
    assert result.rejected == []
    # Retry-After wins over the computed delay; then 2 s and 4 s (doubling from 1 s).
    assert waits == [3.0, 2.0, 4.0]
    assert writer.stored == ["a", "b"]
    assert metrics.value("climastream_sink_write_retries_total", reason="backpressure") == 1
    assert metrics.value("climastream_sink_write_retries_total", reason="transport") == 1
    assert metrics.value("climastream_sink_write_retries_total", reason="server") == 1
    assert metrics.value("climastream_sink_points_written_total", bucket="raw") == 2


async def test_partial_write_is_bisected_to_exactly_the_refused_lines() -> None:
    lines = [f"line{i}" for i in range(100)]
    lines[7] = "BAD7"
    lines[63] = "BAD63"
    lines[64] = "BAD64"
    writer = ScriptedWriter()
    result = await BatchWriter(writer, SinkMetrics()).write("raw", lines)
    assert [index for index, _ in result.rejected] == [7, 63, 64]
    assert all("HTTP 400" in reason for _, reason in result.rejected)
    assert result.written == 97
    assert sorted(writer.stored) == sorted(line for line in lines if "BAD" not in line)


async def test_fatal_errors_propagate_without_retry() -> None:
    writer = ScriptedWriter([AuthError("HTTP 401 token", status=401)])
    with pytest.raises(AuthError):
        await BatchWriter(writer, SinkMetrics()).write("raw", ["a"])
    assert len(writer.calls) == 1


async def test_abort_interrupts_retrying() -> None:
    writer = ScriptedWriter([TransportError("down")] * 1000)

    async def sleep(seconds: float) -> None:
        if len(writer.calls) >= 3:
            batch.abort.set()

    batch = BatchWriter(writer, SinkMetrics(), sleep=sleep)
    with pytest.raises(WriteAborted):
        await batch.write("raw", ["a"])
    assert writer.stored == []
