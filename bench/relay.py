"""Relay benchmark: the same load through a naive relay, Postfix, mailveil and Postfix in
front of mailveil (the production shape, deploy/postfix/), on loopback.

    .venv/bin/python -m bench.relay [--sizes 2k,100k,5m] [--messages N] [--concurrency C]
        [--systems naive,postfix,mailveil-sqlite,mailveil-pg,postfix-mailveil-pg]
        [--fill-bookings N] [--quick]

``--messages`` is the count for the smallest size; 100k gets a quarter of it and 5m a
fiftieth (at least 10; 2 with --quick). Figures go to bench/results/<timestamp>.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.mailveil_sut import Mailveil
from bench.measure import Phase, Sink
from bench.postfix import Postfix, PostfixMailveil
from bench.runner import Runner, measure_all
from bench.systems import REPO, NaiveRelay, System

SYSTEMS = ("naive", "postfix", "mailveil-sqlite", "mailveil-pg", "postfix-mailveil-sqlite",
           "postfix-mailveil-pg")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2k,100k,5m",
                   help="message sizes: 2k, 100k, 5m (with attachments) or bytes")
    p.add_argument("--messages", type=int, help="messages of the smallest size (2000; "
                   "--quick: 150)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent SMTP sessions")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, run in order")
    p.add_argument("--fill-bookings", type=int, default=0, metavar="N",
                   help="also run each mailveil system on a database holding N bookings")
    p.add_argument("--quick", action="store_true", help="smoke run, under ~2 minutes")
    p.add_argument("--bookings", type=int, help="bookings registered through the API (100; "
                   "--quick: 20); the load is spread over them")
    p.add_argument("--rate", type=float, default=0.0, help="offered load in msg/s (open loop, "
                   "for latency below saturation); 0 = as fast as the system answers")
    p.add_argument("--topology", default="split",
                   help="mailveil processes: split (smtp + worker + web, what an operator "
                   "runs on a multi-core host) | split:W (W workers) | serve (one process)")
    p.add_argument("--generator", choices=("python", "smtp-source"), default="python",
                   help="python: a token per message, latencies; smtp-source: cheaper, "
                   "throughput only, one process per booking (up to 8)")
    p.add_argument("--per-connection", type=int, default=1,
                   help="messages per SMTP connection (smtp-source: >1 means -d)")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure each (system, size) this many times, round-robin; keep the best")
    p.add_argument("--stall", type=float, help="give up waiting for arrivals after this many "
                   "seconds without one (60; --quick: 20)")
    p.add_argument("--profile", action="store_true",
                   help="attach py-spy to the mailveil processes and report where time goes")
    p.add_argument("--count-sql", action="store_true",
                   help="count mailveil's SQL statements and commits per message")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)
    if args.messages is None:
        args.messages = 150 if args.quick else 2000
    if args.stall is None:
        args.stall = 20.0 if args.quick else 60.0
    if args.bookings is None:
        args.bookings = 20 if args.quick else 100
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    return args


def make_systems(args: argparse.Namespace, sink_port: int, workdir: Path) -> list[System]:
    out: list[System] = []
    for name in args.systems.split(","):
        if name == "naive":
            out.append(NaiveRelay(sink_port, workdir, args.bookings))
        elif name == "postfix":
            out.append(Postfix(sink_port, workdir, args.bookings))
        else:
            db = "postgresql" if name.endswith("-pg") else "sqlite"
            kind = PostfixMailveil if name.startswith("postfix-") else Mailveil
            for fill in (0, args.fill_bookings) if args.fill_bookings else (0,):
                out.append(kind(sink_port, workdir, args.bookings, database=db,
                                topology=args.topology, fill_bookings=fill,
                                count_sql=args.count_sql))
    return out


async def run(args: argparse.Namespace) -> tuple[list[Phase], dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="mailveil-bench-"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta: dict[str, Any] = {"started": stamp, "args": {k: str(v) for k, v in vars(args).items()},
                            "host": host_info(), "systems": [], "errors": {}, "profiles": {}}
    sink = Sink()
    await sink.start()
    runner = Runner(args, make_systems(args, sink.port, workdir), sink, meta,
                    args.out / f"{stamp}-profile" if args.profile else None)
    return await measure_all(runner, sink, workdir, args.keep), meta


def host_info() -> dict[str, Any]:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]

    def git(*args: str) -> str:  # read-only
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()

    return {"cpus": os.cpu_count(), "loadavg": load, "python": sys.version.split()[0],
            "kernel": platform.release(), "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_mailveil_files": len(git("status", "--porcelain", "--",
                                                  "mailveil").splitlines())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    phases, meta = asyncio.run(run(args))
    meta["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(report.table(phases))
    rows = report.ratios(phases)
    if rows:
        print("\nratios (delivered/s: higher is better; CPU and memory: lower is better; "
              "RSS sums count shared pages once per process, PSS splits them)")
        print(report.ratio_table(rows, ("delivered_per_s", "cpu_per_msg", "peak_rss",
                                        "peak_pss")))
    on_top = report.on_top_of_postfix(phases)
    if on_top:
        print("\nthe production shape on top of plain Postfix")
        print("\n".join(on_top))
    fill_rows = report.fill_ratios(phases)
    if fill_rows:
        print("\nfilled database against empty")
        print(report.ratio_table(fill_rows, ("delivered_per_s", "cpu_per_msg")))
    for name, error in meta["errors"].items():
        print(f"\n{name}: {error}")
    path = args.out / f"{meta['started']}.json"
    report.write_json(path, meta, phases)
    png = path.with_suffix(".png")
    plotted = report.plot(png, phases) if phases else False
    print(f"\nwrote {path}" + (f" and {png}" if plotted else " (no plot: matplotlib missing)"))
    print(f"total {meta['seconds']} s")
    return 1 if meta["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

