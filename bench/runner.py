"""The run: start every system, warm each up, then measure round-robin (each size on each
system in turn, ``--repeat`` times) so background load on a shared machine falls on all
systems alike; the best repetition of each (system, size) is kept. Systems stop at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from bench.loadgen import PythonGenerator, SmtpSourceGenerator
from bench.mailveil_sut import Mailveil
from bench.measure import Generator, Phase, Sink, run_phase
from bench.messages import Template, size_bytes
from bench.profile import Profiler, render, summarize
from bench.systems import System

WARMUP = 30  # at least; 2 x concurrency so that every session (smtpd process) is up


def count_for(size: int, messages: int, floor: int = 10) -> int:
    if size <= 10 * 1024:
        return messages
    if size <= 1024 * 1024:
        return max(floor, messages // 4)
    return max(floor, messages // 50)


def generator(args: argparse.Namespace, port: int) -> Generator:
    if args.generator == "smtp-source":
        return SmtpSourceGenerator("127.0.0.1", port, args.concurrency, args.per_connection)
    return PythonGenerator("127.0.0.1", port, args.concurrency, args.per_connection,
                           rate=args.rate)


def line(p: Phase) -> str:
    lat = "" if p.latency_p50_ms is None else \
        f", latency p50 {p.latency_p50_ms:.0f} ms p99 {p.latency_p99_ms:.0f} ms"
    lost = f", {p.messages - p.delivered} LOST ({p.failure_samples[:1]})" \
        if p.delivered < p.messages else ""
    return (f"  {p.system} {p.size}: {p.delivered_per_s:.1f} msg/s delivered, "
            f"{p.accepted_per_s:.1f} accepted{lat}, CPU {p.cpu_ms_per_msg:.2f} ms/msg, "
            f"RSS {p.peak_rss_mb:.0f} MB, other load {p.other_load_cores:.2f} cores{lost}")


class Runner:
    def __init__(self, args: argparse.Namespace, systems: list[System], sink: Sink,
                 meta: dict[str, Any], profile_dir: Path | None) -> None:
        self.args, self.systems, self.sink, self.meta = args, systems, sink, meta
        self.profiler = Profiler(profile_dir) if profile_dir else None
        self.running: list[System] = []
        self.phase_id = 100

    def _next_phase(self) -> int:
        self.phase_id += 1
        return self.phase_id

    async def start_all(self) -> None:
        for system in self.systems:
            print(f"== {system.name}: starting", flush=True)
            t = time.monotonic()
            try:
                await asyncio.to_thread(system.start)
                await run_phase(system, self.sink, generator(self.args, system.port),
                                self.args.generator, self._next_phase(), "warmup",
                                Template.of_size(2048),
                                max(WARMUP, self.args.concurrency * (1 if self.args.quick else 2)),
                                self.args.concurrency, self.args.stall)
            except Exception as exc:  # report it and go on with the other systems
                self.meta["errors"][system.name] = f"start failed: {exc!r}"[:3000]
                print(f"  start failed: {exc!r}"[:2000], flush=True)
                await asyncio.to_thread(system.stop)
                continue
            filled = getattr(system, "fill_seconds", 0.0)
            print(f"  started and warmed up in {time.monotonic() - t:.1f} s"
                  + (f" (bulk fill: {filled:.1f} s)" if filled else ""), flush=True)
            self.meta["systems"].append(system.describe())
            self.running.append(system)

    async def stop_all(self) -> None:
        for system in self.running:
            await asyncio.to_thread(system.stop)
        self.running = []

    async def measure(self) -> list[Phase]:
        best: dict[tuple[str, str], Phase] = {}
        for rep in range(self.args.repeat):
            for size in self.args.sizes.split(","):
                for system in list(self.running):
                    try:
                        p = await self._phase(system, size, profile=rep == 0)
                    except Exception as exc:
                        self.meta["errors"][system.name] = f"run failed: {exc!r}"[:3000]
                        print(f"  {system.name} run failed: {exc!r}", flush=True)
                        self.running.remove(system)
                        await asyncio.to_thread(system.stop)
                        continue
                    key = (p.system, p.size)
                    if key in best:  # memory: the lowest peak (later rounds inherit the
                        old = best[key]  # high-water mark of the 5 MB messages before)
                        p.peak_rss_mb = min(p.peak_rss_mb, old.peak_rss_mb)
                        p.peak_pss_mb = min(p.peak_pss_mb, old.peak_pss_mb)
                        old.peak_rss_mb, old.peak_pss_mb = p.peak_rss_mb, p.peak_pss_mb
                    if key not in best or p.delivered_per_s > best[key].delivered_per_s:
                        best[key] = p
        order = {s.name: i for i, s in enumerate(self.systems)}
        sizes = self.args.sizes.split(",")
        return sorted(best.values(), key=lambda p: (order[p.system], sizes.index(p.size)))

    async def _phase(self, system: System, size: str, profile: bool) -> Phase:
        template = Template.of_size(size_bytes(size))
        count = count_for(template.size, self.args.messages, 2 if self.args.quick else 10)
        label = f"{system.name}-{size}"
        profiler = self.profiler if profile and isinstance(system, Mailveil) else None
        if profiler is not None:
            profiler.start(system.mailveil_pids(), label, system.role_names)
        p = await run_phase(system, self.sink, generator(self.args, system.port),
                            self.args.generator, self._next_phase(), size, template, count,
                            self.args.concurrency, self.args.stall)
        if profiler is not None:  # the system's own CPU: a database server is not sampled
            files = await asyncio.to_thread(profiler.stop)
            summary = summarize(files, p.delivered, p.cpu_s * 1000 / max(p.delivered, 1))
            self.meta["profiles"][label] = summary
            print(render(summary))
        print(line(p), flush=True)
        if p.sql_per_msg:
            print("    SQL per message: " + ", ".join(
                f"{k} {v:g}" for k, v in p.sql_per_msg.items()), flush=True)
        return p


async def measure_all(runner: Runner, sink: Sink, workdir: Path, keep: bool) -> list[Phase]:
    """Start every system and measure; whatever happens, stop them and the sink, and remove
    the work directory (every system's logs) unless asked to keep it."""
    try:
        await runner.start_all()
        return await runner.measure()
    finally:
        await runner.stop_all()
        await sink.stop()
        if keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
