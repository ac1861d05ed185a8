"""``climastream kpi``: evaluate KPI definitions offline, for tests and audits."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "kpi",
        help="evaluate KPI definitions offline (audits, testing definitions)",
        description="Replay readings through the same KPI code the stream job runs.",
    )
    actions = parser.add_subparsers(dest="kpi_action", metavar="ACTION", required=True)
    ev = actions.add_parser(
        "eval",
        help="replay a JSONL file of readings and print the KpiValues the stream would emit",
        description="Reads one Reading JSON per line (the wire contract) and prints one "
        "KpiValue JSON per line. Windows close on event time; at the end of the input "
        "every window with data is closed, and every hour or day window that has ended by "
        "the wall clock (minus grace; or --now). The input is read twice (stdin, a pipe or "
        "anything else that cannot be rewound is spooled to a temporary file): first "
        "for its gateways, as zone windows close once every gateway has passed them, so "
        "the order of gateways in the file does not change the KPIs. Bad lines are "
        "reported with their line number on stderr and counted; exit status 1 if any. The "
        "last stderr line counts readings left out of KPIs by reason (late, duplicates, "
        "stale).",
        epilog='A reading line: {"device_id": "t1", "gateway_id": "gw1", '
        '"seq": 1, "quantity": "temperature", "value": 21.5, "unit": "Cel", '
        '"event_time": "2026-07-01T21:00:00Z", "ingest_time": '
        '"2026-07-01T21:00:01Z", "zone": "centre"}. Units are the canonical ones '
        "('climastream kpi list' shows each KPI's; e.g. Cel, %RH, ug/m3, dB(A)); times "
        "are RFC 3339 UTC from 2015-01-01 up to 1 h past now. UHI KPIs need a reference "
        "station or zone in --config (reference.device_id / reference.zone).",
    )
    ev.add_argument("--input", required=True, type=Path, help="readings.jsonl ('-': stdin)")
    ev.add_argument("--kpi", metavar="ID", help="only this KPI id (see 'kpi list')")
    ev.add_argument(
        "--config", type=Path, help="stream config YAML (env CLIMASTREAM_STREAM_CONFIG)"
    )
    ev.add_argument(
        "--now",
        metavar="TIME",
        type=_instant,
        help="judge which hour and day windows have ended at this RFC 3339 time instead of "
        "the wall clock, so the same input and --now always print the same KPIs (audits, "
        "regression tests); e.g. 2026-07-02T00:00:00Z",
    )
    ev.set_defaults(func=_eval)
    ls = actions.add_parser("list", help="print the KPI registry")
    ls.add_argument("--config", type=Path, help="stream config YAML")
    ls.set_defaults(func=_list)


def _instant(text: str) -> datetime:
    """An RFC 3339 time with an offset (``Z`` or ``+02:00``), as a UTC datetime."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time: {text!r} (e.g. 2026-07-02T00:00:00Z)"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add Z or +HH:MM")
    return value.astimezone(UTC)


def _config(path: Path | None) -> object:
    import os

    from stream.config import StreamConfig

    env = os.environ.get("CLIMASTREAM_STREAM_CONFIG")
    return StreamConfig.load(path or (Path(env) if env else None))


def _eval(args: argparse.Namespace) -> int:
    from climastream.contract import ContractError, Reading, decode, encode
    from stream.config import StreamConfig, StreamConfigError
    from stream.pipeline import Replay
    from stream.registry import enabled

    try:
        config = _config(args.config)
        assert isinstance(config, StreamConfig)
        enabled(config, args.kpi)  # an unknown --kpi is refused before reading the input
    except (StreamConfigError, ValueError) as exc:
        print(f"kpi eval: {exc}", file=sys.stderr)
        return 2
    bad = 0
    try:
        stream = _rewindable(
            sys.stdin if str(args.input) == "-" else args.input.open(encoding="utf-8")
        )
    except OSError as exc:
        print(f"kpi eval: --input {args.input}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    # the zone stage waits for every gateway of the input, as the live one waits for every
    # partition: the same readings give the same KPIs however the file orders gateways
    gateways = _gateways(stream)
    stream.seek(0)
    now: datetime | None = args.now
    if now is None:
        run = Replay(config, args.kpi, gateways=gateways)
    else:
        run = Replay(config, args.kpi, clock=lambda: now, gateways=gateways)
    batch: list[Reading] = []
    late = 0  # only their number is printed: the readings themselves are let go per batch
    out = sys.stdout.buffer
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                batch.append(decode(line, Reading))
            except ContractError as exc:
                bad += 1
                print(f"kpi eval: {args.input}:{number}: {exc}", file=sys.stderr)
                continue
            if len(batch) >= 500:
                run.add(batch)
                batch = []
                for kpi in run.result.kpis:
                    out.write(encode(kpi) + b"\n")
                run.result.kpis.clear()
                late += len(run.result.late)
                run.result.late.clear()
    if batch:
        run.add(batch)
    result = run.finish()
    for kpi in result.kpis:
        out.write(encode(kpi) + b"\n")
    out.flush()
    print(
        f"kpi eval: late={late + len(result.late)} duplicates={result.duplicates} "
        f"stale={result.stale_readings} bad_lines={bad}",
        file=sys.stderr,
    )
    if config.reference is None and (args.kpi is None or args.kpi.startswith("uhi")):
        print(
            "kpi eval: no UHI reference in the config (reference.device_id or "
            "reference.zone): uhi.* KPIs are not computed",
            file=sys.stderr,
        )
    return 1 if bad else 0


def _rewindable(source: IO[str]) -> IO[str]:
    """``source`` itself if it can be rewound (a regular file), else its content copied to
    a temporary file, which can be read twice: stdin (always: rewinding it could go back
    before where it started), and any input that cannot seek, such as a pipe
    (``--input <(cat r.jsonl)``, ``--input /dev/stdin``) or a FIFO, which is then closed."""
    if source is not sys.stdin and source.seekable():
        return source
    spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (the caller's)
    shutil.copyfileobj(source, spool)
    if source is not sys.stdin:
        source.close()
    spool.seek(0)
    return spool


def _gateways(stream: IO[str]) -> set[str]:
    """The gateway ids of a JSONL file of readings (bad lines are left to the decoder)."""
    import orjson

    gateways: set[str] = set()
    for line in stream:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("gateway_id"), str):
            gateways.add(value["gateway_id"])
    return gateways


def _list(args: argparse.Namespace) -> int:
    from stream.config import StreamConfig, StreamConfigError
    from stream.registry import REGISTRY, resolve_window

    try:
        config = _config(args.config)
    except StreamConfigError as exc:
        print(f"kpi list: {exc}", file=sys.stderr)
        return 2
    assert isinstance(config, StreamConfig)
    for kdef in REGISTRY:
        window = resolve_window(kdef.window, config).describe()
        print(f"{kdef.kpi_id:28} v{kdef.version} {kdef.unit or '(input unit)':12} "
              f"{'/'.join(kdef.scopes):12} {window:32} {kdef.description}")  # fmt: skip
    return 0
