"""The gateway buffer's share of the agent's CPU, without Kafka: CPU µs per reading.

The readings of ``make bench-edge`` (200 devices, both models, SQLite buffer with a 1 s
fsync window) go through :meth:`Agent.ingest` in its batches of 500, then the forwarder's
loop without the producer: take a batch, build the ``ReadingBatch`` record, ack. Prints
CPU µs per reading (``time.process_time``) for the whole ingest, for ``Buffer.append``
inside it, and for take + build + ack. ``--interleave`` drains after every fourth batch,
as the agent does while Kafka keeps up, instead of after the last one (a drained outage).

    .venv/bin/python benchmarks/bench_edge_buffer.py [--readings N] [--interleave]

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_edge import config, make_samples  # noqa: E402

from edge.agent import Agent  # noqa: E402
from edge.buffer import Kind, Record  # noqa: E402
from edge.inference import ModelRunner  # noqa: E402


class NoUplink:
    async def send(self, topic: str, key: bytes, value: bytes) -> Any:
        raise RuntimeError("nothing is sent")

    async def stop(self) -> None:
        return None


def run(total: int, interleave: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config("localhost:1", Path(tmp) / "bench.db")
        agent = Agent(cfg, sources=[], uplink=NoUplink())
        buffer = agent.buffer = agent._buffer_factory()
        agent.models = [ModelRunner(m) for m in cfg.models]
        append = buffer.append
        in_append = 0.0

        def timed_append(records: list[Record]) -> Any:
            nonlocal in_append
            start = time.process_time()
            try:
                return append(records)
            finally:
                in_append += time.process_time() - start

        buffer.append = timed_append  # type: ignore[method-assign,assignment]
        in_ingest = in_drain = 0.0
        sent = 0

        def drain() -> None:
            nonlocal in_drain, sent
            start = time.process_time()
            while pending := agent._take(Kind.READING):
                assert agent._batch_record(pending)
                sent += buffer.ack(Kind.READING, pending[-1].last)
            in_drain += time.process_time() - start

        for index, batch in enumerate(make_samples(total)):
            start = time.process_time()
            agent.ingest(batch)
            in_ingest += time.process_time() - start
            if interleave and index % 4 == 3:
                drain()
        drain()
        buffer.close()
        n = agent.counters.accepted
        assert sent == n
        print(
            f"{n} readings{' (interleaved)' if interleave else ''}: "
            f"ingest {in_ingest / n * 1e6:.2f} µs/reading, of which append "
            f"{in_append / n * 1e6:.2f}; take + build record + ack {in_drain / n * 1e6:.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--interleave", action="store_true")
    args = parser.parse_args()
    run(args.readings, args.interleave)
