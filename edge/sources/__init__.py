"""Sources: where readings enter the gateway.

A source is started once, read repeatedly, and stopped once::

    await source.start()         # open ports/connections; may raise on a bad config
    samples = await source.read()  # waits for the next samples; never raises on bad input
    await source.stop()          # idempotent; safe after a failed start

``read`` returns decoded samples; bad input is counted by the source (``decode_errors``),
never raised. Reconnection is the source's business: while its device is gone, ``read``
waits and ``state`` says so.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple, Protocol

from climastream.contract import Location, Quantity, SourceState

#: A device counter numbers *frames*; a frame can carry up to 255 measurements (framed
#: protocol), so reading seq = frame counter * SEQ_STRIDE + position in the frame. A frame
#: redelivered (MQTT QoS 1 after a crash) gets the same seqs and is deduplicated downstream.
SEQ_STRIDE = 256


class Sample(NamedTuple):
    """One decoded measurement before the gateway stamps and validates it.

    A NamedTuple, not a frozen dataclass: one is built per measurement on the gateway's
    hot path, and a tuple builds in about a third of the time.
    """

    device_id: str
    quantity: Quantity
    value: float
    unit: str
    event_time: datetime
    seq: int | None = None  # the device's own counter (fCnt, frame seq); None: gateway assigns
    zone: str | None = None
    location: Location | None = None
    #: ``event_time`` is the gateway's own time of receipt, not the device's: wrong while
    #: the gateway's clock is not synchronized (the agent flags it ``clock_unsynced``)
    gateway_time: bool = False


class Source(Protocol):
    name: str

    @property
    def state(self) -> SourceState: ...

    @property
    def decode_errors(self) -> dict[str, int]: ...

    async def start(self) -> None: ...

    async def read(self) -> list[Sample]: ...

    async def stop(self) -> None: ...
