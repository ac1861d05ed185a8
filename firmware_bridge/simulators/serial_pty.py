"""Virtual serial sensors on a pseudo-terminal: pyserial opens ``device.port`` like hardware.

Each device owns a pty pair. :meth:`VirtualSerialDevice.step` samples its signal at the
clock's time and writes one frame (plus any injected garbage) to the master side, and
returns what it wrote, so a test can compare the decoded readings with the truth.
:meth:`run` steps in a background thread at a fixed period (for demos); ``close`` stops
it and closes the pty. A step that fails (a simulator bug) is logged and counted in
``step_errors`` and the device keeps stepping; only a closed pty ends the thread. Nothing
here decodes: the reader under test does that.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import random
import threading
import tty
from dataclasses import dataclass
from datetime import UTC, datetime

from climastream.quantities import Quantity
from firmware_bridge.serial_codecs.framed import encodable_range, encode_frame
from firmware_bridge.serial_codecs.pms5003 import encode_pms5003
from firmware_bridge.serial_codecs.sds011 import encode_sds011
from firmware_bridge.simulators.signals import Clock, DiurnalTemperature, Faults, TrafficPm

log = logging.getLogger(__name__)
_U16 = 0xFFFF


@dataclass(frozen=True, slots=True)
class Written:
    """One step's output: the true values (None on dropout) and the bytes written."""

    time: datetime
    values: tuple[float, ...] | None
    wire: bytes


class VirtualSerialDevice(abc.ABC):
    """Base of the pty devices; subclasses implement :meth:`_sample` and :meth:`_frame`."""

    #: full scale of each value, where a spike fault saturates (what the frame can carry)
    limits: tuple[tuple[float, float], ...] | None = None

    def __init__(
        self, *, seed: int = 0, clock: Clock | None = None, faults: Faults | None = None
    ) -> None:
        self.rng = random.Random(seed)
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.faults = faults or Faults()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._last: tuple[float, ...] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: steps of :meth:`run` that raised (and were skipped)
        self.step_errors = 0

    @abc.abstractmethod
    def _sample(self, when: datetime) -> tuple[float, ...]:
        """The device's true values at ``when``."""

    @abc.abstractmethod
    def _frame(self, values: tuple[float, ...], when: datetime) -> bytes:
        """The wire frame carrying ``values``."""

    def step(self) -> Written:
        """Write the frame for the current clock time; return what was written."""
        when = self.clock()
        values = self.faults.apply(self._sample(when), self._last, when, self.rng, self.limits)
        wire = self.faults.noise_bytes(when, self.rng)
        if values is not None:
            wire += self._frame(values, when)
            self._last = values
        if wire:
            os.write(self._master, wire)
        return Written(when, values, wire)

    def run(self, period_s: float = 1.0) -> None:
        """Step every ``period_s`` seconds in a daemon thread until :meth:`close`."""

        def loop() -> None:
            while not self._stop.wait(period_s):
                try:
                    self.step()
                except OSError:
                    return  # the pty is closed
                except Exception:  # a bug in one step must not silently end the device
                    self.step_errors += 1
                    log.error(
                        "simulated device step failed, skipped port=%s device=%s errors=%d",
                        self.port,
                        type(self).__name__,
                        self.step_errors,
                        exc_info=self.step_errors == 1,  # the traceback once
                    )

        self._thread = threading.Thread(target=loop, name=f"sim-{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close both pty ends; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> VirtualSerialDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VirtualSds011(VirtualSerialDevice):
    """An SDS011 sending (PM2.5, PM10) frames with traffic peaks; values rounded to 0.1."""

    limits = ((0.0, _U16 / 10), (0.0, _U16 / 10))

    def __init__(
        self,
        *,
        device_id: int = 0xA160,
        signal: TrafficPm | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(seed=seed, clock=clock, faults=faults)
        self.device_id = device_id
        self.signal = signal or TrafficPm()

    def _sample(self, when: datetime) -> tuple[float, ...]:
        pm25, pm10 = self.signal.value(when, self.rng)
        return (round(pm25, 1), round(pm10, 1))

    def _frame(self, values: tuple[float, ...], when: datetime) -> bytes:
        return encode_sds011(values[0], values[1], self.device_id)


class VirtualPms5003(VirtualSerialDevice):
    """A PMS5003 sending atmospheric PM1/PM2.5/PM10 (integers, as the sensor does)."""

    limits = ((0.0, float(_U16)),) * 3

    def __init__(
        self,
        *,
        signal: TrafficPm | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(seed=seed, clock=clock, faults=faults)
        self.signal = signal or TrafficPm()

    def _sample(self, when: datetime) -> tuple[float, ...]:
        pm25, pm10 = self.signal.value(when, self.rng)
        return (float(round(pm25 * 0.7)), float(round(pm25)), float(round(pm10)))

    def _frame(self, values: tuple[float, ...], when: datetime) -> bytes:
        atm = (int(values[0]), int(values[1]), int(values[2]))
        cf1 = (atm[0], atm[1], atm[2])
        fine, coarse = atm[1], atm[2]
        counts = (  # particles per 0.1 L; the sensor's counters peg at 65535
            min(_U16, fine * 180),
            min(_U16, fine * 55),
            min(_U16, fine * 9),
            coarse // 2,
            coarse // 10,
            coarse // 40,
        )
        return encode_pms5003(cf1, atm, counts)


class VirtualFramedNode(VirtualSerialDevice):
    """A climastream node sending temperature and humidity in the framed protocol."""

    limits = (
        encodable_range(Quantity.TEMPERATURE),
        encodable_range(Quantity.RELATIVE_HUMIDITY),
    )

    def __init__(
        self,
        *,
        device_id: str = "node-1",
        signal: DiurnalTemperature | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(seed=seed, clock=clock, faults=faults)
        self.device_id = device_id
        self.signal = signal or DiurnalTemperature()
        self.seq = 0

    def _sample(self, when: datetime) -> tuple[float, ...]:
        temperature = round(self.signal.value(when, self.rng), 2)
        humidity = round(min(100.0, max(0.0, 85 - 1.8 * (temperature - 10))), 2)
        return (temperature, humidity)

    def _frame(self, values: tuple[float, ...], when: datetime) -> bytes:
        frame = encode_frame(
            self.device_id,
            self.seq,
            when,
            [(Quantity.TEMPERATURE, values[0], 0), (Quantity.RELATIVE_HUMIDITY, values[1], 0)],
        )
        self.seq = (self.seq + 1) % 2**32
        return frame
