"""ONNX inference on the gateway: models per device group, micro-batched across devices.

A :class:`ModelRunner` owns one onnxruntime session. The agent hands it every batch of
readings (JSON-ready dicts, in arrival order) before they are validated and stored; the
runner

1. keeps the feature state it needs (latest value per device and quantity, and the last N
   values of windowed series), forgetting a series once it has been silent for longer than
   every input's ``max_age_s`` (it could not feed the model any more; devices come and go
   over a gateway's months of uptime),
2. builds one input row per reading of its device group and quantity whose features are
   all known and fresh,
3. runs the session *once* for the whole batch (all devices together), and
4. applies each output: a ``score`` on the reading, a ``correct``-ed value, or a ``derive``-d
   new reading. Every reading it touched carries ``model_id = "<id>:<sha256[:12]>"`` of the
   model file, so each KPI can be traced to the model version.

Sessions use one intra-op and one inter-op thread with spinning off, so an idle gateway
uses no CPU for inference. A model that fails to load or run never stops the readings:
they flow on flagged ``model_failed`` and the failure is counted in :attr:`failures`. No
model output makes a reading invalid either: a bad output value, or a derived device id
the contract would refuse, flags the reading instead.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from climastream.contract import SAFE_ID_PATTERN, QualityFlag
from climastream.quantities import CANONICAL_UNITS, SPECS, Quantity
from edge.config import ModelConfig, ModelOutputConfig

log = logging.getLogger(__name__)

ReadingDict = dict[str, Any]

_FAILED = QualityFlag.MODEL_FAILED.value
_safe_id = re.compile(SAFE_ID_PATTERN).fullmatch
_ANOMALY = QualityFlag.ANOMALY.value
_CORRECTED = QualityFlag.CORRECTED.value
_UNSYNCED = QualityFlag.CLOCK_UNSYNCED.value


def session_options() -> Any:
    """One thread, no spinning: a Pi-friendly onnxruntime session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def file_ref(model_id: str, path: Path) -> str:
    """``<id>:<first 12 hex of the file's SHA-256>``, or ``<id>:unreadable``."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return f"{model_id}:unreadable"
    return f"{model_id}:{digest}"


def _add_flag(reading: ReadingDict, flag: str) -> None:
    quality = reading.get("quality")
    if quality is None:
        reading["quality"] = [flag]
    elif flag not in quality:
        quality.append(flag)


class ModelRunner:
    """One configured model; see the module docstring. Not thread-safe: one caller."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        session_factory: Callable[[Path], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.id = config.id
        self.ref = file_ref(config.id, config.path)
        self.quantity = config.quantity.value
        self.error: str | None = None
        self.failures: dict[str, int] = {}
        self.runs = 0
        self.rows = 0
        self.last_latency_ms: float | None = None
        self._clock = clock
        self._patterns = config.devices
        self._group: dict[str, bool] = {}
        self._derived_ids: dict[str, bool] = {}
        self._latest: dict[tuple[str, str], tuple[float, float]] = {}
        self._windows: dict[tuple[str, str], deque[float]] = {}
        #: per windowed series: the time between each value and the one before it
        self._gaps: dict[tuple[str, str], deque[float]] = {}
        self._window_len = max(f.window for f in config.inputs)
        #: a series silent this long feeds no input: its state is forgotten (see _prune)
        self._forget_s = max(f.max_age_s for f in config.inputs)
        self._next_prune = clock() + self._forget_s
        #: per input column: (quantity, fixed device or None, window, max age)
        self._inputs = [
            (f.quantity.value if f.quantity else self.quantity, f.device, f.window, f.max_age_s)
            for f in config.inputs
        ]
        self._consumed = {quantity for quantity, *_ in self._inputs}
        self._session: Any = None
        self._input_name = ""
        try:
            self._session = (session_factory or self._load)(config.path)
            self._input_name = self._session.get_inputs()[0].name
            width = self._session.get_inputs()[0].shape[-1]
            expected = sum(f.window for f in config.inputs)
            if isinstance(width, int) and width != expected:
                raise ValueError(f"model takes {width} features, config maps {expected}")
        except Exception as exc:  # any load problem: readings flow on, flagged
            self._session = None
            self.error = f"load failed: {exc}"
            self._fail("load")
            log.error("model load failed model=%s path=%s error=%s", self.id, config.path, exc)

    @staticmethod
    def _load(path: Path) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(
            str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )

    def _fail(self, stage: str, count: int = 1) -> None:
        self.failures[stage] = self.failures.get(stage, 0) + count

    @property
    def series(self) -> int:
        """How many (device, quantity) series the runner keeps state for."""
        return len(self._latest)

    def _prune(self, now: float) -> None:
        """Forget the series silent for longer than every input's ``max_age_s``.

        Such a series feeds no input until it reports again (:meth:`_features` refuses a
        value that old, and a gap that long in a window), and then it starts again from
        that value either way: forgetting it changes no verdict. Run once per that
        interval, so what is kept is the series heard within the last two intervals. The
        device-group caches are emptied too; they refill with the devices still heard.
        """
        horizon = now - self._forget_s
        latest, windows, gaps = self._latest, self._windows, self._gaps
        for key in [key for key, (_, at) in latest.items() if at < horizon]:
            del latest[key]
            windows.pop(key, None)
            gaps.pop(key, None)
        self._group.clear()
        self._derived_ids.clear()
        self._next_prune = now + self._forget_s

    def in_group(self, device_id: str) -> bool:
        member = self._group.get(device_id)
        if member is None:
            member = any(fnmatch.fnmatchcase(device_id, p) for p in self._patterns)
            self._group[device_id] = member
        return member

    # ----------------------------------------------------------------- features

    def _features(self, device_id: str, now: float) -> list[float] | None:
        row: list[float] = []
        for quantity, device, width, max_age_s in self._inputs:
            key = (device or device_id, quantity)
            if width > 1:
                # fresh like a single value (newest), and no value older than max_age_s
                # when the next one came: a longer gap restarts the series
                window = self._windows.get(key)
                if window is None or len(window) < width:
                    return None
                if now - self._latest[key][1] > max_age_s:
                    return None
                gaps = self._gaps[key]
                if len(gaps) == width - 1:
                    if max(gaps) > max_age_s:
                        return None
                    row += window
                else:
                    if max(list(gaps)[1 - width :]) > max_age_s:
                        return None
                    row += list(window)[-width:]
                continue
            latest = self._latest.get(key)
            if latest is None or now - latest[1] > max_age_s:
                return None
            row.append(latest[0])
        return row

    # ----------------------------------------------------------------- batch

    def process(self, readings: list[ReadingDict]) -> list[ReadingDict]:
        """Apply the model to a batch in place; returns derived readings (to be appended)."""
        now = self._clock()
        if now >= self._next_prune:
            self._prune(now)
        targets: list[ReadingDict] = []
        rows: list[list[float]] = []
        consumed = self._consumed
        own = self.quantity
        latest = self._latest
        windows = self._windows if self._window_len > 1 else None
        group = self._group
        loaded = self._session is not None
        features = self._features
        for reading in readings:
            quantity = reading["quantity"]
            if quantity not in consumed:
                continue
            device_id = reading["device_id"]
            key = (device_id, quantity)
            if windows is not None:
                window = windows.get(key)
                if window is None:
                    window = windows[key] = deque(maxlen=self._window_len)
                    self._gaps[key] = deque(maxlen=self._window_len - 1)
                else:
                    self._gaps[key].append(now - latest[key][1])
                window.append(reading["value"])
            latest[key] = (reading["value"], now)
            if quantity != own:
                continue
            member = group.get(device_id)
            if member is None:
                member = self.in_group(device_id)
            if not member:
                continue
            if not loaded:
                _add_flag(reading, _FAILED)
                reading["model_id"] = self.ref
                continue
            row = features(device_id, now)
            if row is not None:
                targets.append(reading)
                rows.append(row)
        if not rows:
            return []
        return self._run(targets, rows)

    def _run(self, targets: list[ReadingDict], rows: list[list[float]]) -> list[ReadingDict]:
        import numpy as np

        started = time.perf_counter()
        try:
            outputs = self._session.run(None, {self._input_name: np.asarray(rows, np.float32)})
            result = np.asarray(outputs[0], dtype=np.float64).reshape(len(rows), -1)
        except Exception as exc:  # a run failure flags the readings; it never drops them
            self._fail("run", len(rows))
            self.error = f"run failed: {exc}"
            log.warning("model run failed model=%s rows=%d error=%s", self.id, len(rows), exc)
            for reading in targets:
                _add_flag(reading, _FAILED)
                reading["model_id"] = self.ref
            return []
        self.last_latency_ms = (time.perf_counter() - started) * 1000.0
        self.runs += 1
        self.rows += len(rows)
        self.error = None
        # Checks run on whole columns; the per-reading loop below only applies verdicts.
        # Per output: (spec, values, verdicts) with verdict 0 bad output, 1 ok, 2 ok and
        # at or above the score threshold.
        columns: list[tuple[ModelOutputConfig, list[float], list[int]]] = []
        for spec in self.config.outputs:
            if spec.column < result.shape[1]:
                column = result[:, spec.column]
            else:
                column = np.full(len(rows), math.nan)
            with np.errstate(invalid="ignore"):
                good = np.isfinite(column)
                if spec.kind == "score":
                    verdict = good.astype(np.int8)
                    if spec.threshold is not None:
                        verdict += good & (column >= spec.threshold)
                else:
                    plausible = SPECS[spec.quantity or Quantity(self.quantity)]
                    good &= (column >= plausible.low) & (column <= plausible.high)
                    verdict = good.astype(np.int8)
            columns.append((spec, column.tolist(), verdict.tolist()))
        ref = self.ref
        derived: list[ReadingDict] = []
        bad = 0
        for index, reading in enumerate(targets):
            for spec, values, verdicts in columns:
                outcome = verdicts[index]
                if not outcome:
                    bad += 1
                    _add_flag(reading, _FAILED)
                    reading["model_id"] = ref
                elif spec.kind == "score":
                    reading["score"] = values[index]
                    reading["model_id"] = ref
                    if outcome == 2:
                        _add_flag(reading, _ANOMALY)
                elif spec.kind == "correct":
                    reading["value"] = values[index]
                    reading["model_id"] = ref
                    _add_flag(reading, _CORRECTED)
                elif self._derivable(reading["device_id"] + spec.device_suffix):
                    derived.append(self._derive(reading, spec, values[index]))
                elif _safe_id(reading["device_id"]):
                    # the derived device's id would be too long for the contract: derive
                    # nothing rather than a reading that could only be refused
                    self._fail("derive_id")
                    _add_flag(reading, _FAILED)
                    reading["model_id"] = ref
        if bad:
            self._fail("bad_output", bad)
        return derived

    def _derivable(self, device_id: str) -> bool:
        """Whether a derived device may have this id (the contract's id: up to 128)."""
        ok = self._derived_ids.get(device_id)
        if ok is None:
            ok = self._derived_ids[device_id] = _safe_id(device_id) is not None
        return ok

    def _derive(self, reading: ReadingDict, spec: ModelOutputConfig, value: float) -> ReadingDict:
        quantity = spec.quantity or Quantity(reading["quantity"])
        new = {k: v for k, v in reading.items() if k not in ("seq", "score", "quality", "model_id")}
        new["seq"] = None  # the gateway numbers derived series
        new["device_id"] = reading["device_id"] + spec.device_suffix
        new["quantity"] = quantity.value
        new["unit"] = CANONICAL_UNITS[quantity]
        new["value"] = value
        new["model_id"] = self.ref
        new["quality"] = [QualityFlag.DERIVED.value]
        if _UNSYNCED in (reading.get("quality") or ()):
            new["quality"].append(_UNSYNCED)  # its event time is the source's, as wrong
        return new
