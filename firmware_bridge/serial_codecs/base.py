"""The stream decoder interface: bytes from a serial port in, frames and errors out."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from firmware_bridge.model import DecodeError, DecodeResult

logger = logging.getLogger(__name__)


class StreamDecoder(ABC):
    """Decodes a byte stream whose reads split and join frames arbitrarily.

    Contract:

    - :meth:`feed` is called with whatever bytes a read returned (possibly empty, possibly
      a fraction of a frame or several frames). It never blocks and never raises: it returns
      the complete frames found so far, each a :class:`Decoded` or a :class:`DecodeError`,
      in stream order, and keeps an incomplete tail for the next call.
    - After garbage (a sensor plugged in mid-frame, line noise) the decoder resynchronises
      on the next frame start; skipped bytes are counted in ``counters['garbage_bytes']``.
    - Every outcome is counted in :attr:`counters` by name: ``frames_ok`` plus one key per
      error reason. The buffer is bounded by :attr:`max_buffer`.
    - :meth:`reset` drops buffered bytes, e.g. after the port was reopened.
    """

    #: codec name as the CLI and gateway config spell it
    name: str = ""
    #: bytes kept while waiting for the rest of a frame; more than this is garbage
    max_buffer: int = 4096

    def __init__(self, *, device_id: str | None = None) -> None:
        self.device_id = device_id
        self._buffer = bytearray()
        self.counters: dict[str, int] = {"frames_ok": 0, "garbage_bytes": 0}

    def feed(self, chunk: bytes) -> list[DecodeResult]:
        """Add ``chunk`` to the stream; return every frame it completed (see class contract)."""
        self._buffer += chunk
        results: list[DecodeResult] = []
        try:
            self._drain(results)
        except Exception as exc:  # a decoder bug must not take the reader loop down
            logger.exception("decoder bug codec=%s", self.name)
            raw = bytes(self._buffer)
            self._buffer.clear()
            results.append(DecodeError("internal_error", f"decoder bug: {exc!r}", raw=raw))
        for result in results:
            self._count("frames_ok" if not isinstance(result, DecodeError) else result.reason)
        if len(self._buffer) > self.max_buffer:
            self.counters["garbage_bytes"] += len(self._buffer)
            self._buffer.clear()
        return results

    def reset(self) -> None:
        """Forget buffered bytes (counters are kept)."""
        self._buffer.clear()

    @property
    def buffered(self) -> int:
        """Bytes waiting for the rest of a frame."""
        return len(self._buffer)

    def _count(self, key: str, amount: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount

    def _skip(self, count: int) -> None:
        """Drop ``count`` leading bytes as garbage."""
        if count > 0:
            del self._buffer[:count]
            self.counters["garbage_bytes"] += count

    @abstractmethod
    def _drain(self, results: list[DecodeResult]) -> None:
        """Consume complete frames from ``self._buffer`` into ``results``."""
