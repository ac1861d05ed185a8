"""Devices over MQTT: LoRaWAN network servers (ChirpStack, TTS) and generic JSON devices.

Delivery contract (at-least-once, nothing lost): the source subscribes with QoS 1 on a
persistent session (fixed client id, ``clean_session`` off), so the broker keeps messages
while the gateway is down. Messages are acknowledged (PUBACK) only when the agent calls the
ack returned by :meth:`MqttSource.read_acked`, which it does after the readings are
durable. A crash before that makes the broker redeliver; frames with a device counter
(fCnt, framed seq) get the same (device, seq) again and are deduplicated downstream.

aiomqtt 2.x (the maintained successor of asyncio-mqtt) has no manual-ack option as of
2.5.1, so the source switches it on in the paho client aiomqtt wraps (``manual_ack_set``)
and acks with paho's ``ack(mid, qos)``: the one place we reach into aiomqtt's client. Acks
of a connection that has since dropped are skipped: the broker redelivers those messages.

When the agent cannot store a batch (disk full), it calls the ack's ``redeliver()``
instead: the source drops that connection and reconnects after a backoff (doubling from
``reconnect_min_s`` to ``reconnect_max_s`` while storing keeps failing), and the broker
redelivers every unacknowledged message of the session. Unacked messages are never
counted as dropped; left on a live connection they would only fill the broker's in-flight
window until it stops delivering.

Bad input (a ``DecodeError``, and the agent's ``invalid_reading``) counts once per message:
a batch's decode errors are added to :attr:`MqttSource.decode_errors` when its ack goes
through, like its readings are stored then. A batch that is redelivered instead (not
stored, or its connection gone before the ack) counts when it comes again; counted at each
delivery, one bad payload read as one per delivery.

A *retained* message the broker replays because the source subscribed (MQTT sets the
RETAIN flag only on those: a message matching an established subscription, live or
queued in the persistent session, comes with it cleared) is acknowledged and skipped,
counted in :attr:`MqttSource.retained` and, like bad input, in the source's decode errors
as ``retained_replay`` (so the gateway status and ``/metrics`` show it): it is the topic's
last value from some earlier
time, replayed at every (re)subscribe, not a new uplink. Decoded, a payload without a
time of its own became a stale value stamped "now", and one without a device counter a
new gateway seq at every reconnect: a duplicate that no consumer could recognise.

A payload the decoder chokes on (a decoder bug: it raised instead of returning a
``DecodeError``) is counted as ``internal_error``, logged with its topic, and acked with
its batch: left unacked it would be redelivered after every reconnect, and unacked messages
fill the broker's in-flight window until it stops delivering to the gateway at all.

``check=True`` (``climastream edge check``) connects as a separate client: its own client
id (the service's plus ``-check-<pid>``) on a clean session, so it sees only messages
published while it is connected, its own copies, and never takes over or acknowledges the
service's persistent session (whose queued uplinks must reach Kafka through the service).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from climastream.contract import Location, SourceState
from climastream.extras import require
from edge.config import MqttSourceConfig
from edge.sources import Sample
from edge.sources.convert import to_samples

log = logging.getLogger(__name__)

#: the decode-error reason of a retained message replayed at subscribe, skipped
RETAINED_REPLAY = "retained_replay"

MAX_BATCH = 500
#: A connection that stayed up this long was healthy: after it is lost the source
#: reconnects after ``reconnect_min_s`` again. One lost sooner doubles the delay, so a
#: broker that accepts and then drops the client at once (the session taken over by
#: another client with the same id) is not reconnected to in a tight loop.
STABLE_S = 10.0


class MqttSource:
    def __init__(
        self,
        config: MqttSourceConfig,
        *,
        gateway_id: str = "gateway",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        check: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` stamps what the source receives; ``monotonic`` times its connections
        (NTP steps the wall clock on a Pi, by days after boot)."""
        from firmware_bridge.codecs import CodecOptions
        from firmware_bridge.lorawan.layout import builtin_layout, load_layout
        from firmware_bridge.mqtt.generic_json import mapping_from_dict

        self.name = config.name
        self._config = config
        self._devices = config.device_meta()  # as readings name them (DevEUIs lower case)
        self._clock = clock
        self._monotonic = monotonic
        layout = None
        if config.layout is not None:
            layout = (
                load_layout(config.layout)
                if config.layout.endswith((".yaml", ".yml"))
                else builtin_layout(config.layout)
            )
        mapping = (
            mapping_from_dict(config.mapping, f"sources.{config.name}.mapping")
            if (config.mapping is not None)
            else None
        )
        self._options = CodecOptions(
            layout=layout, mapping=mapping, inner=config.lorawan_codec or "cayenne", now=clock
        )
        self._client_id = config.broker.client_id or f"climastream-{gateway_id}-{config.name}"
        # the service's session is persistent; a check must neither take it over (same
        # client id) nor leave a session of its own behind on the broker
        self._clean_session = check
        if check:
            self._client_id += f"-check-{os.getpid()}"
        self._client: Any = None
        self._messages: Any = None
        self._generation = 0
        self._state = SourceState.DOWN
        self._errors: dict[str, int] = {}
        self._bugs_logged: set[str] = set()  # exception types logged with a traceback
        self._backoff = config.reconnect_min_s
        self.reconnects = 0
        self._connected_once = False
        self._connected_at: float | None = None  # monotonic
        #: why the source is not up (for `edge check`), None while it is
        self.last_error: str | None = None
        self._hold_off = 0.0  # wait before the next connect (after a redeliver)
        self._redeliver_backoff = config.reconnect_min_s
        self._closing: set[asyncio.Task[None]] = set()
        #: retained messages replayed at subscribe and skipped (see the module docstring)
        self.retained = 0

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def decode_errors(self) -> dict[str, int]:
        return self._errors

    @property
    def topics(self) -> tuple[str, ...]:
        """The topic filters the source subscribes to."""
        return tuple(self._config.topics)

    def _zone(self, device: str) -> str | None:
        meta = self._devices.get(device)
        return meta.zone if meta else None

    def _location(self, device: str) -> Location | None:
        meta = self._devices.get(device)
        return meta.location if meta else None

    async def start(self) -> None:
        require("aiomqtt", "edge")
        self._state = SourceState.CONNECTING

    async def _connect(self) -> None:
        import aiomqtt

        broker = self._config.broker
        tls = None
        if broker.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(broker.ssl_cafile) if broker.ssl_cafile else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password.get_secret_value() if broker.password else None,
            identifier=self._client_id,
            clean_session=self._clean_session,
            keepalive=broker.keepalive_s,
            tls_params=tls,
            max_queued_incoming_messages=10000,
        )
        client._client.manual_ack_set(True)  # see the module docstring
        await client.__aenter__()
        try:
            for topic in self._config.topics:
                await client.subscribe(topic, qos=1)
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
        self._client = client
        self._messages = client.messages.__aiter__()
        self._generation += 1
        self._state = SourceState.UP
        self._connected_at = self._monotonic()
        self.last_error = None
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        log.info("mqtt connected source=%s broker=%s:%s", self.name, broker.host, broker.port)

    async def _drop(self) -> None:
        client, self._client = self._client, None
        self._state = SourceState.CONNECTING
        if client is not None:
            await self._close(client)

    async def _close(self, client: Any) -> None:
        try:
            await client.__aexit__(None, None, None)
        except Exception as exc:
            log.debug("mqtt disconnect error source=%s error=%r", self.name, exc)

    async def read(self) -> list[Sample]:
        samples, ack = await self.read_acked()
        ack()
        return samples

    async def read_acked(self) -> tuple[list[Sample], Callable[[], bool]]:
        """Next batch of samples and the ack to call once they are durable.

        The ack is a :class:`Delivery`: ``redeliver()`` instead when they cannot be stored.
        """
        import aiomqtt

        while True:
            if self._client is None:
                if self._hold_off:
                    hold, self._hold_off = self._hold_off, 0.0
                    await asyncio.sleep(hold)
                try:
                    await self._connect()
                except (aiomqtt.MqttError, OSError) as exc:
                    broker = self._config.broker
                    self.last_error = f"cannot connect to {broker.host}:{broker.port}: {exc}"
                    log.warning(
                        "mqtt connect failed source=%s broker=%s:%s error=%s",
                        self.name,
                        broker.host,
                        broker.port,
                        exc,
                    )
                    await asyncio.sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, self._config.reconnect_max_s)
                    continue
            client, generation, incoming = self._client, self._generation, self._messages
            try:
                first = await incoming.__anext__()
                messages = [first]
                while len(client.messages) > 0 and len(messages) < MAX_BATCH:
                    messages.append(await incoming.__anext__())
            except (aiomqtt.MqttError, StopAsyncIteration) as exc:
                if self._current(client, generation):  # not dropped on purpose (redeliver)
                    self._lost(exc)
                    await self._drop()
                continue
            if not self._current(client, generation):
                # the connection was dropped for redelivery while this read waited: the
                # broker sends these messages again after the reconnect, after the batch
                # that could not be stored; returned now they would be stored twice, and
                # before that batch
                continue
            errors: dict[str, int] = {}
            samples = self._decode(messages, errors)
            return samples, Delivery(self, client, generation, messages, errors)

    def _lost(self, exc: BaseException) -> None:
        """Log a lost connection and set the delay before the next connect."""
        up = self._monotonic() - self._connected_at if self._connected_at is not None else 0.0
        broker = self._config.broker
        self.last_error = f"connection to {broker.host}:{broker.port} lost: {exc}"
        if up >= STABLE_S:
            self._backoff = self._config.reconnect_min_s
        self._hold_off = self._backoff
        self._backoff = min(self._backoff * 2, self._config.reconnect_max_s)
        hint = ""
        if up < STABLE_S:
            hint = (
                f" (after {up:.1f}s; if this repeats, another client may be using client id "
                f"{self._client_id!r} and taking the session over, such as a second agent "
                "with this gateway's config)"
            )
        log.warning(
            "mqtt connection lost, reconnecting in %.1fs source=%s error=%s%s",
            self._hold_off,
            self.name,
            exc,
            hint,
        )

    def _decode(self, messages: list[Any], errors: dict[str, int]) -> list[Sample]:
        """Samples of the messages; their decode errors counted into ``errors``."""
        from dataclasses import replace

        from firmware_bridge.codecs import decode_payload

        samples: list[Sample] = []
        for message in messages:
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else str(message.payload).encode()
            )
            topic = str(message.topic)
            if getattr(message, "retain", False):
                if not self.retained:
                    log.info(
                        "retained message skipped source=%s topic=%s: the broker replays a "
                        "topic's retained last value at each subscribe; it is not a new "
                        "uplink (logged once, counted in edge check)",
                        self.name,
                        topic,
                    )
                self.retained += 1
                errors[RETAINED_REPLAY] = errors.get(RETAINED_REPLAY, 0) + 1
                continue
            options = replace(self._options, topic=topic)
            try:
                results = decode_payload(self._config.format, payload, options)
            except Exception as exc:  # a decoder bug: count it, skip the message, carry on
                self._decoder_failed(exc, topic, payload, errors)
                continue
            samples.extend(
                to_samples(
                    results,
                    errors=errors,
                    now=self._clock,
                    zone=self._zone,
                    location=self._location,
                )
            )
        return samples

    def _decoder_failed(
        self, exc: Exception, topic: str, payload: bytes, errors: dict[str, int]
    ) -> None:
        errors["internal_error"] = errors.get("internal_error", 0) + 1
        kind = type(exc).__name__
        log.error(
            "decoder failed, message skipped source=%s format=%s topic=%s payload=%s error=%r",
            self.name,
            self._config.format,
            topic,
            payload[:64].hex(),
            exc,
            exc_info=kind not in self._bugs_logged,  # one traceback per exception type
        )
        self._bugs_logged.add(kind)

    def _current(self, client: Any, generation: int) -> bool:
        return generation == self._generation and self._client is client

    def _ack(
        self, client: Any, generation: int, messages: list[Any], errors: dict[str, int]
    ) -> bool:
        if not self._current(client, generation):
            return False  # that connection is gone; the broker redelivers
        for message in messages:
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)
        self._redeliver_backoff = self._config.reconnect_min_s
        for reason, count in errors.items():
            self._errors[reason] = self._errors.get(reason, 0) + count
        return True

    def _redeliver(self, client: Any, generation: int) -> None:
        if not self._current(client, generation):
            return  # that connection is gone already: the broker redelivers
        hold = self._redeliver_backoff
        self._redeliver_backoff = min(hold * 2, self._config.reconnect_max_s)
        log.warning(
            "readings not stored: reconnecting in %.1fs so that the broker redelivers "
            "them source=%s",
            hold,
            self.name,
        )
        self._client = None
        self._state = SourceState.CONNECTING
        self._hold_off = hold
        task = asyncio.get_running_loop().create_task(self._close(client))
        self._closing.add(task)  # ends the pending read of that connection too
        task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        await self._drop()
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._state = SourceState.DISABLED


class Delivery:
    """The ack of one batch of messages (a callable, as the agent expects).

    Call it once the batch's readings are durable: the messages are acknowledged (PUBACK)
    and their decode errors counted; it returns True. :meth:`redeliver` when they could
    not be stored: the source drops the connection they came on, and the broker sends
    every unacknowledged message again after the reconnect. Both are no-ops once that
    connection is gone (the broker redelivers anyway): the call returns False, and the
    batch's bad input is counted when it comes again.
    """

    __slots__ = ("_client", "_errors", "_generation", "_messages", "_source")

    def __init__(
        self,
        source: MqttSource,
        client: Any,
        generation: int,
        messages: list[Any],
        errors: dict[str, int],
    ):
        self._source = source
        self._client = client
        self._generation = generation
        self._messages = messages
        self._errors = errors

    def __call__(self) -> bool:
        return self._source._ack(self._client, self._generation, self._messages, self._errors)

    def redeliver(self) -> None:
        self._source._redeliver(self._client, self._generation)
