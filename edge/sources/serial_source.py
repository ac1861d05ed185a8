"""A sensor on a serial port (pyserial), decoded by a firmware_bridge stream decoder.

Blocking port reads run in a worker thread (``run_in_executor``), never on the event loop;
each read waits at most ``read_timeout_s`` so shutdown stays prompt. When the device
vanishes (USB unplugged, pty closed) the source closes the port, reports ``connecting``
and reopens it with exponential backoff (``reconnect_min_s`` doubling up to
``reconnect_max_s``); every successful reopen after a loss counts in :attr:`reconnects`
(exported as ``climastream_edge_source_reconnects``). The decoder is reset on reopen, so a
half frame from before the unplug can never be glued to bytes from after it.

A stream decoder turns its own bugs into ``internal_error`` results; should ``feed`` raise
all the same, the read is counted as ``internal_error``, logged, the decoder reset, and
reading goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from climastream.contract import SourceState
from climastream.extras import require
from edge.config import SerialSourceConfig
from edge.sources import Sample
from edge.sources.convert import to_samples

log = logging.getLogger(__name__)


#: what an installer can do about the usual reasons a port does not open (by errno)
_OPEN_HINTS = {
    errno.ENOENT: "no such device: is it plugged in, and is the path right? "
    "USB sensors are listed in /dev/serial/by-id/",
    errno.EACCES: "the agent's user may not open it: is it in the dialout group?",
    errno.EAGAIN: "another process has the port open, such as the running "
    "climastream-edge service; stop it to test-read this port with edge check",
    errno.EBUSY: "another process has the port open",
}


def explain_open_error(exc: BaseException) -> str:
    """``exc`` as text, with what to do about it when the reason is a usual one."""
    hint = _OPEN_HINTS.get(getattr(exc, "errno", None) or 0)
    return f"{exc} ({hint})" if hint else str(exc)


class SerialSource:
    def __init__(
        self,
        config: SerialSourceConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        from firmware_bridge.codecs import CodecOptions, stream_decoder

        self.name = config.name
        self._config = config
        self._clock = clock
        self._decoder = stream_decoder(config.codec, CodecOptions(device_id=config.device_id))
        self._port: Any = None
        self._state = SourceState.DOWN
        self._errors: dict[str, int] = {}
        self._backoff = config.reconnect_min_s
        self._lost = False
        #: why the port could not be opened last time (None: open, or not tried yet)
        self.last_error: str | None = None
        self._stopped = False
        self.reconnects = 0

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def decode_errors(self) -> dict[str, int]:
        """Rejected frames by reason, plus ``garbage_bytes``: line noise skipped while
        resynchronising, which never formed a frame but says the link is bad."""
        garbage = self._decoder.counters.get("garbage_bytes", 0)
        return {**self._errors, "garbage_bytes": garbage} if garbage else self._errors

    async def start(self) -> None:
        """Try to open the port once; a missing device is not an error (it may come)."""
        require("serial", "edge")
        self._state = SourceState.CONNECTING
        await self._try_open()

    def _open_blocking(self) -> Any:
        import serial

        return serial.Serial(
            self._config.port,
            baudrate=self._config.baudrate,
            timeout=self._config.read_timeout_s,
            exclusive=True,
        )

    async def _try_open(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            self._port = await loop.run_in_executor(None, self._open_blocking)
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            self._state = SourceState.CONNECTING
            error = explain_open_error(exc)
            if error != self.last_error:  # once per distinct cause, not once per retry
                log.warning(
                    "serial port cannot be opened, retrying with backoff source=%s port=%s "
                    "error=%s",
                    self.name,
                    self._config.port,
                    error,
                )
            self.last_error = error
            return False
        self.last_error = None
        self._decoder.reset()
        self._state = SourceState.UP
        self._backoff = self._config.reconnect_min_s
        if self._lost:
            self.reconnects += 1
            self._lost = False
            log.info("serial device back source=%s port=%s", self.name, self._config.port)
        return True

    def _read_blocking(self) -> bytes:
        port = self._port
        data: bytes = port.read(max(1, port.in_waiting))
        return data

    def _lose(self, exc: BaseException) -> None:
        log.warning(
            "serial device lost source=%s port=%s error=%s", self.name, self._config.port, exc
        )
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(OSError):
                port.close()
        self._state = SourceState.CONNECTING
        self._lost = True

    async def read(self) -> list[Sample]:
        """Wait for the next decoded samples; reconnects while the device is gone."""
        loop = asyncio.get_running_loop()
        while True:
            if self._port is None:
                if self._stopped:
                    await asyncio.sleep(3600)
                if not await self._try_open():
                    await asyncio.sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, self._config.reconnect_max_s)
                    continue
            try:
                chunk = await loop.run_in_executor(None, self._read_blocking)
            except (OSError, TypeError, AttributeError) as exc:
                # pyserial raises SerialException (OSError) or, on a vanished pty, TypeError
                self._lose(exc)
                continue
            if not chunk:
                continue
            try:
                results = self._decoder.feed(chunk)
            except Exception:  # a decoder bug: count it, drop the read, carry on
                self._errors["internal_error"] = self._errors.get("internal_error", 0) + 1
                log.exception(
                    "decoder failed, read dropped source=%s port=%s device=%s bytes=%s",
                    self.name,
                    self._config.port,
                    self._config.device_id,
                    chunk[:64].hex(),
                )
                self._decoder.reset()
                continue
            samples = to_samples(
                results,
                errors=self._errors,
                now=self._clock,
                device_id=self._config.device_id,
                zone=lambda _d: self._config.zone,
                location=lambda _d: self._config.location,
            )
            if samples:
                return samples

    async def stop(self) -> None:
        self._stopped = True
        port, self._port = self._port, None
        if port is not None:
            port.close()
        self._state = SourceState.DISABLED
