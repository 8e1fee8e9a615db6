"""Scale-out benchmark: mailveil on PostgreSQL with 1, 2 and 4 worker processes, measured in
one run, round-robin, so that every worker count shares the machine's conditions.

    .venv/bin/python -m bench.workers [--workers 1,2,4] [--sizes 2k,100k] [--messages N]
        [--repeat R] [--concurrency C] [--count-sql] [--quick]

Each worker count is its own system (``split:W``: one listener, one web role, W workers,
its own database); the table adds each one's delivered msg/s against one worker and the
CPU per message of each role (listener, workers together, web, PostgreSQL), which is what
sizes the workers on other hardware when this machine's cores are shared. Figures go to
bench/results/<timestamp>-workers.json (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import relay, report
from bench.mailveil_sut import Mailveil
from bench.measure import Phase, Sink
from bench.procstat import cpu_seconds
from bench.runner import Runner, measure_all
from bench.systems import System


def parse_args(argv: list[str] | None) -> tuple[list[int], argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="4,2,1", help="worker counts, comma-separated, "
                   "started in this order (the largest first: it starts slowest)")
    p.add_argument("--sizes", default="2k,100k")
    p.add_argument("--messages", type=int, help="messages of the smallest size (2000)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--count-sql", action="store_true",
                   help="count SQL statements and commits per message (bench.sqlcount)")
    p.add_argument("--out", default=str(relay.RESULTS), help="where the JSON goes")
    own = p.parse_args(argv)
    workers = [int(w) for w in own.workers.split(",")]
    forwarded = ["--systems", "mailveil-pg", "--sizes", own.sizes, "--repeat", str(own.repeat),
                 "--concurrency", str(own.concurrency), "--out", own.out]
    forwarded += (["--quick"] if own.quick else []) + (["--keep"] if own.keep else []) \
        + (["--messages", str(own.messages)] if own.messages else []) \
        + (["--count-sql"] if own.count_sql else [])
    return workers, relay.parse_args(forwarded)


def role_cpu(system: Mailveil) -> dict[str, float]:
    """CPU seconds so far of each role, the workers together."""
    out: dict[str, float] = {}
    for role, proc in zip(system.role_names, system.procs, strict=True):
        used = cpu_seconds(proc.pid)
        out[role] = out.get(role, 0.0) + (used[1] if used else 0.0)
    return out


class RoleRunner(Runner):
    """The harness's run, plus each role's CPU per delivered message in every phase: how
    much of a core one message costs the workers is what sizes them on other hardware."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.role_ms: dict[int, dict[str, float]] = {}  # id of a phase -> role -> ms

    async def _phase(self, system: System, size: str, profile: bool) -> Phase:
        assert isinstance(system, Mailveil)
        before = role_cpu(system)
        p = await super()._phase(system, size, profile)
        after = role_cpu(system)
        self.role_ms[id(p)] = {role: round((after[role] - before[role]) * 1000
                                           / max(p.delivered, 1), 2) for role in after}
        print(f"    CPU ms/msg by role: {self.role_ms[id(p)]}", flush=True)
        return p


def scaling(phases: list[Phase], base: str,
            role_ms: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    """Each system's throughput and costs per size, and its throughput against ``base``."""
    first = {p.size: p for p in phases if p.system == base}
    return [{"system": p.system, "size": p.size, "delivered_per_s": round(p.delivered_per_s, 1),
             "vs_one_worker": round(p.delivered_per_s / max(first[p.size].delivered_per_s,
                                                              1e-9), 2),
             "cpu_ms_per_msg": round(p.cpu_ms_per_msg, 2),
             "db_cpu_ms_per_msg": round(p.db_cpu_s * 1000 / max(p.delivered, 1), 2),
             "role_cpu_ms_per_msg": role_ms.get(id(p), {}), "sql_per_msg": p.sql_per_msg,
             "p99_ms": round(p.latency_p99_ms or 0.0),
             "other_load_cores": round(p.other_load_cores, 2), "lost": p.messages - p.delivered}
            for p in phases if p.size in first]


async def run(workers: list[int], args: argparse.Namespace,
              meta: dict[str, Any]) -> tuple[list[Phase], dict[int, dict[str, float]]]:
    workdir = Path(tempfile.mkdtemp(prefix="mailveil-bench-workers-"))
    sink = Sink()
    await sink.start()
    systems = [Mailveil(sink.port, workdir, args.bookings, database="postgresql",
                        topology=f"split:{w}", count_sql=args.count_sql) for w in workers]
    runner = RoleRunner(args, list(systems), sink, meta, None)
    return await measure_all(runner, sink, workdir, args.keep), runner.role_ms


def main(argv: list[str] | None = None) -> int:
    workers, args = parse_args(argv)
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta: dict[str, Any] = {"started": stamp, "args": {k: str(v) for k, v in vars(args).items()},
                            "workers": workers, "host": relay.host_info(), "systems": [],
                            "errors": {}, "profiles": {}}
    phases, role_ms = asyncio.run(run(workers, args, meta))
    meta["host_after"] = relay.host_info()["loadavg"]
    meta["seconds"] = round(time.monotonic() - started, 1)
    rows = scaling(phases, f"mailveil-pg[split:{min(workers)}]", role_ms)
    meta["scaling"] = rows
    print()
    print(report.table(phases))
    print(f"\nagainst {min(workers)} worker(s); load average before "
          f"{meta['host']['loadavg']}, after {meta['host_after']}")
    for r in rows:
        print(f"  {r['system']} {r['size']}: {r['delivered_per_s']} msg/s = "
              f"{r['vs_one_worker']:.2f}x, CPU {r['cpu_ms_per_msg']} ms/msg "
              f"(db {r['db_cpu_ms_per_msg']}; by role {r['role_cpu_ms_per_msg']}), "
              f"other load {r['other_load_cores']} cores")
    for name, error in meta["errors"].items():
        print(f"\n{name}: {error}")
    path = args.out / f"{stamp}-workers.json"
    report.write_json(path, meta, phases)
    print(f"\nwrote {path}; total {meta['seconds']} s")
    return 1 if meta["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
