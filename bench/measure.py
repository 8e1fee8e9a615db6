"""One measured phase: M messages of one size through one system, from the first connection
to the last arrival at the sink, with the CPU and memory of the system's processes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from bench.loadgen import Envelope, Sent
from bench.messages import Template
from bench.procstat import Group, cpu_seconds, machine_busy_seconds
from bench.systems import REPO, System, free_port

SETTLE = 0.5  # after the last arrival: let the system record its deliveries, then read CPU


class Generator(Protocol):
    async def run(self, phase: int, envelopes: list[Envelope], count: int,
                  template: Template) -> Sent: ...


class Sink:
    """``python -m bench.sink`` as a child process; arrivals are read from its stdout."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sink", str(self.port), cwd=REPO,
            stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the sink did not start")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            tok, t = line.split()
            self.arrivals[tok.decode()].append(float(t))

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


@dataclass
class Phase:
    system: str
    size: str
    size_bytes: int
    messages: int
    concurrency: int
    generator: str
    accepted: int = 0
    delivered: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    accepted_per_s: float = 0.0
    delivered_per_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    cpu_ms_per_msg: float = 0.0
    harness_cpu_ms_per_msg: float = 0.0
    other_load_cores: float = 0.0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    peak_processes: int = 0
    sql_per_msg: dict[str, float] | None = None


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _harness_cpu(sink: Sink) -> float:
    pids = [os.getpid()] + ([sink.proc.pid] if sink.proc else [])
    return sum(c[1] for pid in pids if (c := cpu_seconds(pid)) is not None)


async def _sample(group: Group) -> None:
    while True:
        await asyncio.sleep(0.25)
        group.sample()  # a few ms of /proc reading; in the loop, so nothing races


async def run_phase(system: System, sink: Sink, generator: Generator, gen_name: str,
                    phase: int, size: str, template: Template, count: int,
                    concurrency: int, stall: float) -> Phase:
    out = Phase(system.name, size, template.size, count, concurrency, gen_name)
    group = Group(system.roots, system.extra)
    sql0 = await asyncio.to_thread(system.sql_counts)
    group.begin()
    harness0, busy0 = _harness_cpu(sink), machine_busy_seconds()
    sampler = asyncio.create_task(_sample(group))
    try:
        sent = await generator.run(phase, system.envelopes(), count, template)
        expected = len(sent.accepted) if sent.accepted else count - len(sent.failures)
        shared = len(set(sent.tokens)) == 1  # smtp-source: one token for the whole phase

        def arrived() -> list[float]:
            if shared:
                return sink.arrivals.get(sent.tokens[0], [])
            return [sink.arrivals[t][0] for t in sent.accepted if t in sink.arrivals]

        seen, last_change = 0, time.monotonic()
        while (n := len(arrived())) < expected and time.monotonic() - last_change < stall:
            if n != seen:
                seen, last_change = n, time.monotonic()
            await asyncio.sleep(0.02)
        await asyncio.sleep(SETTLE)
    finally:
        sampler.cancel()
    own, db = group.cpu_used()
    sql1 = await asyncio.to_thread(system.sql_counts)
    times = arrived()
    out.accepted = len(sent.accepted) if sent.accepted else count - len(sent.failures)
    out.delivered, out.failures = len(times), len(sent.failures)
    out.failure_samples = sent.failures[:5]
    last_accept = max(sent.accepted.values(), default=sent.finished)
    last_arrival = max(times, default=sent.finished)
    out.seconds = last_arrival - sent.started
    out.accepted_per_s = out.accepted / max(last_accept - sent.started, 1e-9)
    out.delivered_per_s = out.delivered / max(out.seconds, 1e-9)
    latencies = [sink.arrivals[t][0] - a for t, a in sent.accepted.items() if t in sink.arrivals]
    if latencies:
        out.latency_p50_ms = _quantile(latencies, 0.5) * 1000
        out.latency_p99_ms = _quantile(latencies, 0.99) * 1000
        out.latency_max_ms = max(latencies) * 1000
    harness = _harness_cpu(sink) - harness0
    busy = machine_busy_seconds() - busy0
    elapsed = out.seconds + SETTLE
    out.cpu_s, out.db_cpu_s = own, db
    out.cpu_ms_per_msg = (own + db) * 1000 / max(out.delivered, 1)
    out.harness_cpu_ms_per_msg = harness * 1000 / max(out.delivered, 1)
    out.other_load_cores = max(0.0, busy - own - db - harness) / max(elapsed, 1e-9)
    out.peak_rss_mb = group.peak_rss / 2**20
    out.peak_pss_mb = group.peak_pss / 2**20
    out.peak_processes = group.peak_procs
    if sql0 is not None and sql1 is not None:
        out.sql_per_msg = {k: round((v - sql0.get(k, 0)) / max(out.delivered, 1), 2)
                           for k, v in sorted(sql1.items()) if v != sql0.get(k, 0)}
    return out
