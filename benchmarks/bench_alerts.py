"""Alert latency: a triggering reading produced to Kafka -> the e-mail at the SMTP server.

Runs the real alert engine and notifier processes on the local stack (started if needed,
with CLIMASTREAM_STACK_DIR / CLIMASTREAM_*_PORT), and a real SMTP server with STARTTLS and
AUTH. Each trial produces one ReadingBatch whose temperature crosses a ``set`` level for a
fresh device (a new alert), and waits for its e-mail. Reported: median and p99 per rule
pending duration, against the target p99 <= 2 s + pending duration.

Baselines measured in the same run: the Kafka hop alone (produce -> a plain consumer
receives it) and the SMTP delivery alone (EmailChannel.send to the same server).

    make bench-alerts            # or: python benchmarks/bench_alerts.py --trials 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from climastream.contract import (  # noqa: E402
    Alert,
    AlertSeverity,
    AlertState,
    Quantity,
    Reading,
    ReadingBatch,
    Topics,
)
from climastream.stack import Stack, StackConfig  # noqa: E402
from sinks.notify.channels import EmailChannel  # noqa: E402
from sinks.notify.config import SmtpConfig  # noqa: E402
from sinks.notify.message import Kind, render  # noqa: E402
from stream.alerts.testing import AlertingSystem, wait_for  # noqa: E402

PENDING_S = (0.0, 1.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def rules() -> dict[str, object]:
    return {
        "rules": [
            {
                "id": f"hot-for-{int(p * 1000)}ms",
                "kind": "threshold",
                "source": "reading",
                "quantity": "temperature" if p == 0 else "dew_point",
                "set": 45.0,
                "clear": 40.0,
                "for": f"{p}s",
                "severity": "critical",
            }
            for p in PENDING_S
        ]
    }


def batch(device: str, quantity: Quantity) -> ReadingBatch:
    now = datetime.now(UTC)
    return ReadingBatch(
        gateway_id="gw-bench",
        readings=(
            Reading(
                device_id=device,
                gateway_id="gw-bench",
                seq=1,
                quantity=quantity,
                value=47.0,
                unit="Cel",
                event_time=now,
                ingest_time=now,
                zone="bench",
            ),
        ),
    )


async def kafka_hop(bootstrap: str, trials: int) -> list[float]:
    """Produce -> consume latency of one small record (the transport floor)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = Topics.DEAD_LETTER.name
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        out = []
        for _ in range(trials):
            marker = uuid.uuid4().hex.encode()
            t0 = time.time()
            await producer.send_and_wait(topic, b"bench", key=marker, partition=0)
            while True:
                batches = await consumer.getmany(tp, timeout_ms=1000)
                if any(r.key == marker for r in batches.get(tp, [])):
                    break
            out.append(time.time() - t0)
        return out
    finally:
        await consumer.stop()
        await producer.stop()


async def smtp_only(system: AlertingSystem, trials: int) -> list[float]:
    config = SmtpConfig(
        host="127.0.0.1",
        port=system.smtp.port,
        username=system.smtp.username,
        password=system.smtp.password,  # type: ignore[arg-type]
        sender="alerts@city.test",  # type: ignore[call-arg]
        ca_file=system.smtp.cert,
    )
    now = datetime.now(UTC)
    alert = Alert(
        fingerprint="0123456789abcdef",
        rule_id="bench",
        state=AlertState.FIRING,
        severity=AlertSeverity.CRITICAL,
        summary="bench",
        started_at=now,
        updated_at=now,
    )
    note = render(alert, Kind.FIRING, console_url="http://c", zone=ZoneInfo("UTC"))
    channel = EmailChannel(config)
    out = []
    for i in range(trials):
        t0 = time.time()
        await channel.send(note, "bench@city.test", f"smtp-{i}")
        out.append(time.time() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    stack = Stack(StackConfig())
    started = not all(stack.pid(s) for s in ("kafka", "mqtt", "tsdb"))
    stack.up()
    run = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    system = AlertingSystem(
        stack.config.kafka_bootstrap,
        workdir,
        rules(),
        routes=[{"match": {}, "notify": ["duty"]}],
        contacts={"duty": {"email": "duty@city.test"}},
        run_id=run,
    )
    try:
        system.start_engine()
        system.start_notifier()
        results: dict[float, list[float]] = {}
        for pending in PENDING_S:
            quantity = Quantity.TEMPERATURE if pending == 0 else Quantity.DEW_POINT
            latencies = []
            for trial in range(args.trials):
                device = f"bench-{run}-{int(pending * 1000)}-{trial}"
                sent = system.publisher.send(Topics.READINGS.name, batch(device, quantity))
                mail = wait_for(
                    lambda device=device: system.mails(lambda m: device in m.body),  # type: ignore[misc]
                    30,
                    f"the e-mail for {device}",
                    poll=0.005,
                )[0]
                latencies.append(mail.received_at - sent)
            results[pending] = latencies
        hop = asyncio.run(kafka_hop(stack.config.kafka_bootstrap, args.trials))
        smtp = asyncio.run(smtp_only(system, args.trials))
    finally:
        system.close()
        if started:
            stack.down()
    hop_median = statistics.median(hop)
    print(f"bench-alerts: trials={args.trials} per rule")
    print(
        f"  baseline kafka hop (produce->consume): median={hop_median * 1000:.1f} ms "
        f"p99={percentile(hop, 0.99) * 1000:.1f} ms"
    )
    print(
        f"  baseline smtp alone (STARTTLS+AUTH+DATA): median={statistics.median(smtp) * 1000:.1f} "
        f"ms p99={percentile(smtp, 0.99) * 1000:.1f} ms"
    )
    ok = True
    for pending, latencies in results.items():
        median, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        target = 2.0 + pending
        ok &= p99 <= target
        print(
            f"  reading->e-mail, rule for={pending:.0f}s: median={median * 1000:.0f} ms "
            f"p99={p99 * 1000:.0f} ms (target p99 <= {target:.1f} s: "
            f"{'met' if p99 <= target else 'MISSED'}); "
            f"median/kafka-hop={median / hop_median:.1f}x"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
