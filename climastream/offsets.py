"""End offsets confirmed by a fetch, for brokers whose ``ListOffsets`` undercounts.

Kafka answers ``ListOffsets`` (latest) with the offset after the partition's last record.
Tansu 0.6 (the local stack's broker) answers with the offset after the *first* record of
the partition's last batch: after one batch of five records at offsets 0-4 it says 1,
while a fetch reports the true high watermark, 5. Anything that takes the first answer as
"where the partition ends" stops short of the last batch's other records.

Faust's table recovery is such a thing. It reads a changelog partition up to that offset,
and it refuses to start (``ConsistencyError``: "The persisted offset ... is higher than
the last offset in that topic") when its local RocksDB already holds those records. The
KPI engine's checkpoints put several records into one batch (a partition's two stages, a
checkpoint in parts), so a worker restarted on the local stack crashed.

:func:`confirmed_end_offsets` fetches the last batch of each non-empty partition and
takes the fetch's high watermark. On Kafka the two answers agree, and the cost is one
fetch per partition, paid when a worker recovers its tables.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def client_settings(client: Any) -> dict[str, Any]:
    """The connection settings of a running aiokafka client (TLS and SASL included), to
    open another client to the same cluster the same way."""
    return {
        "bootstrap_servers": client._bootstrap_servers,
        "security_protocol": client._security_protocol,
        "ssl_context": client._ssl_context,
        "sasl_mechanism": client._sasl_mechanism,
        "sasl_plain_username": client._sasl_plain_username,
        "sasl_plain_password": client._sasl_plain_password,
        "sasl_kerberos_service_name": client._sasl_kerberos_service_name,
        "sasl_kerberos_domain_name": client._sasl_kerberos_domain_name,
        "sasl_oauth_token_provider": client._sasl_oauth_token_provider,
    }


async def confirmed_end_offsets(
    ends: Mapping[Any, int], *, timeout_ms: int = 5000, **settings: Any
) -> dict[Any, int]:
    """``ends`` (``ListOffsets`` answers by TopicPartition), each raised to the high
    watermark a fetch of the partition's last batch reports; ``settings`` are aiokafka
    client keywords (``bootstrap_servers``, TLS, SASL).

    A partition whose fetch gets nothing within ``timeout_ms`` keeps its answer.
    """
    from aiokafka import AIOKafkaConsumer

    confirmed = dict(ends)
    check = [tp for tp, end in ends.items() if end is not None and end > 0]
    if not check:
        return confirmed
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, fetch_max_wait_ms=100, isolation_level="read_uncommitted",
        **settings,
    )  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(check)
        for tp in check:
            consumer.seek(tp, ends[tp] - 1)  # on Tansu: the first record of the last batch
        waiting = set(check)
        deadline = time.monotonic() + timeout_ms / 1000
        while waiting and time.monotonic() < deadline:
            batches = await consumer.getmany(*waiting, timeout_ms=200)
            for tp in list(waiting):
                highwater = consumer.highwater(tp)  # set by any fetch response, even empty
                records = batches.get(tp)
                if highwater is None and not records:
                    continue
                last = records[-1].offset + 1 if records else 0
                confirmed[tp] = max(ends[tp], last, highwater or 0)
                waiting.discard(tp)
    finally:
        await consumer.stop()
    return confirmed
