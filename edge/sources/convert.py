"""From firmware_bridge results to gateway samples, counting decode errors by reason."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from climastream.contract import Location
from edge.sources import SEQ_STRIDE, Sample
from firmware_bridge.model import DecodeError, DecodeResult


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
    gateway's receive time is the event time.
    """
    samples: list[Sample] = []
    received = now()
    for result in results:
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
            seq = None if m.seq is None else m.seq * SEQ_STRIDE + min(index, SEQ_STRIDE - 1)
            samples.append(
                Sample(
                    device_id=device,
                    quantity=m.quantity,
                    value=m.value,
                    unit=m.unit,
                    event_time=m.time or received,
                    seq=seq,
                    zone=zone(device),
                    location=location(device),
                )
            )
    return samples
