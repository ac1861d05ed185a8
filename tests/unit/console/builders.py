"""Contract records for the console's unit tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp.test_utils import TestServer

from climastream.contract import Location, Quantity, Reading
from climastream.quantities import CANONICAL_UNITS

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def reading(
    device: str, zone: str, seq: int, quantity: Quantity, value: float, at: datetime = T0
) -> Reading:
    """A reading of ``device`` in ``zone`` from gateway ``gw``, located, stamped ``at``."""
    return Reading(
        device_id=device,
        gateway_id="gw",
        seq=seq,
        quantity=quantity,
        value=value,
        unit=CANONICAL_UNITS[quantity],
        event_time=at,
        ingest_time=at,
        zone=zone,
        location=Location(lat=50.8, lon=4.3),
    )


async def raw_request(server: TestServer, method: str, path: str, headers: bytes) -> bytes:
    """A request written byte by byte (a client library would refuse bad header bytes);
    the whole answer, status line first."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: console\r\n".encode()
        + headers
        + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer
