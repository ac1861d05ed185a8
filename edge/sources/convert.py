"""From firmware_bridge results to gateway samples, counting decode errors by reason."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from climastream.contract import Location
from edge.sources import SEQ_STRIDE, Sample
from firmware_bridge.model import DecodeError, DecodeResult

#: how far apart frames read together are stamped (see :func:`to_samples`)
_FRAME_GAP = timedelta(milliseconds=1)


def to_samples(
    results: Iterable[DecodeResult],
    *,
    errors: dict[str, int],
    now: Callable[[], datetime],
    device_id: str | None = None,
    zone: Callable[[str], str | None] = lambda _device: None,
    location: Callable[[str], Location | None] = lambda _device: None,
) -> list[Sample]:
    """Samples for every decoded measurement; every error counted under its reason.

    A measurement without a device id takes ``device_id`` (the config's name for a serial
    sensor); without either it is counted as ``no_device_id``. Without a device time the
    gateway's receive time is the event time; that, or a time the decoder reckoned from the
    gateway's clock (SenML relative times), the sample says (``gateway_time``).

    Frames read together (a serial read holds every frame that came since the last one)
    are stamped 1 ms apart, the last at the receive time: they came in that order, and
    further apart than that (a 20-byte frame takes 1.7 ms at 115,200 baud). Stamped alike,
    two frames of one device were two readings with the same series and time, which the
    database keeps as one point (sinks/SCHEMA.md): a stalled reader lost readings there.
    """
    samples: list[Sample] = []
    append = samples.append
    received = now()
    if not isinstance(results, list | tuple):
        results = list(results)
    # the receive time of each frame, from the first frame's (earliest) on
    stamp = received - _FRAME_GAP * (len(results) - 1)
    # zone and location are per device: looked up once per call, not once per value
    where: dict[str, tuple[str | None, Location | None]] = {}
    last = SEQ_STRIDE - 1
    for result in results:
        received, stamp = stamp, stamp + _FRAME_GAP
        if isinstance(result, DecodeError):
            errors[result.reason] = errors.get(result.reason, 0) + 1
            continue
        position: dict[str, int] = {}
        for m in result.measurements:
            device = m.device_id or device_id
            if device is None:
                errors["no_device_id"] = errors.get("no_device_id", 0) + 1
                continue
            index = position.get(device, 0)
            position[device] = index + 1
            seq = m.seq
            if seq is not None:
                seq = seq * SEQ_STRIDE + (index if index < last else last)
            place = where.get(device)
            if place is None:
                place = where[device] = (zone(device), location(device))
            if m.time is not None and not m.gateway_time:
                append(Sample(device, m.quantity, m.value, m.unit, m.time, seq, *place))
            else:
                when = received if m.time is None else m.time
                append(Sample(device, m.quantity, m.value, m.unit, when, seq, *place, True))
    return samples
