"""A download box: N engine processes, each running the whole pipeline on its own tars.

One Python process tops out near one core of coordination work (fetch bookkeeping, tar writing), so a
box runs ``--processes`` engine processes. They take the tars of the box's shard ``i/N`` from one
queue (``fetcher/tarfeed.py``), the next free engine the next tar: tar ``k`` still holds rows
``[kS, (k+1)S)`` and is written by exactly one process, whatever P is, so outputs, resume and
``--shard`` mean what they meant. The parent does nothing per image: it holds the box-global politeness table
(``fetcher/boxslots.py``), forwards stop signals, serves one /metrics and one progress view built
from the engines' reports, and prints one summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from fetcher.boxmonitor import BoxMonitor
from fetcher.boxslots import BoxHandle, BoxSlots
from fetcher.config import Config
from fetcher.lifecycle import RunAborted, exit_code_for
from fetcher.logs import setup_logging
from fetcher.options import ConfigError
from fetcher.pipeline import Pipeline, RunPlan, StopCounts, prepare, run, stop_line
from fetcher.reader import InputFile
from fetcher.summary import RunStats
from fetcher.tarfeed import SharedFeed

log = logging.getLogger(__name__)
REPORT_EVERY = 1.0  # seconds between an engine's progress reports to the box
_PR_SET_PDEATHSIG = 1


def run_box(cfg: Config) -> int:
    """Plan the box's shard, run it on one engine (in this process) or several; returns the exit code."""
    plan = prepare(cfg)
    engines = cfg.run.engine_count(len(plan.todo))
    cfg = replace(cfg, run=replace(cfg.run, processes=engines))
    plan = replace(plan, cfg=cfg)
    if engines == 1:
        return run(cfg, plan).exit_code
    return Box(cfg, plan, engines).run()


def engine_config(cfg: Config) -> Config:
    """An engine's config: the box's, with a private metrics port and no progress view of its own."""
    monitor = replace(cfg.monitor, metrics_address="127.0.0.1:0", progress="off")
    return replace(cfg, monitor=monitor)


@dataclass
class EngineReport:
    """An engine's last word to the box."""

    stats: RunStats
    exposition: str = ""  # its final metrics, kept in the box's totals
    error: str = ""  # a RunAborted/ConfigError message
    exit_code: int = 0
    signal: int = 0  # the stop signal it got, 0 for none
    stopped: StopCounts = field(default_factory=StopCounts)  # what a stop did with its open tars


@dataclass
class _Engine:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    stats: RunStats = field(default_factory=RunStats)
    outcome: EngineReport | None = None


class Box:
    """The parent of the engine processes."""

    def __init__(self, cfg: Config, plan: RunPlan, engines: int) -> None:
        self.cfg = cfg
        self.plan = plan
        self.count = engines
        self.stats = plan.new_stats()
        self.monitor = BoxMonitor(cfg.monitor, self.stats, cfg.run.shard_pair, plan.output.local_root)
        self.engines: list[_Engine] = []
        self.signalled: signal.Signals | None = None
        self.table: BoxSlots | None = None
        self.coordinator_cpu = 0.0  # CPU seconds of this process from the engines' start to their end

    def run(self) -> int:
        """Start the engines, supervise them to the end, print one summary; returns the exit code."""
        import uvloop

        cpu = time.process_time()  # what coordinating the box costs, start-up (imports, planning) left out
        ctx = multiprocessing.get_context("spawn")
        order = tuple(t.index for t in self.plan.todo)  # one queue of tars: the next free engine takes the next
        cursor = ctx.Value("q", 0)
        with BoxSlots.create(self.count, ctx.Lock()) as table:
            for j in range(self.count):
                reader, writer = ctx.Pipe(duplex=False)
                args = (engine_config(self.cfg), j, table.handle, writer, Shared(order, cursor, self.plan.files))
                proc = ctx.Process(target=engine_main, args=args, name=f"fetcher-engine-{j}")
                proc.start()
                writer.close()
                self.engines.append(_Engine(j, proc, reader))
            self.table = table
            try:
                uvloop.run(self._supervise())
            finally:
                for e in self.engines:
                    if e.process.is_alive():
                        e.process.kill()
                    e.process.join()
        self.coordinator_cpu = time.process_time() - cpu
        return self._finish()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        done: list[asyncio.Future[None]] = []
        for e in self.engines:
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(e.conn.fileno(), self._on_message, e, fut)
            done.append(fut)
        async with self.monitor:
            await asyncio.gather(*done)
            for e in self.engines:
                await loop.run_in_executor(None, e.process.join)
            self.stats.finished = time.monotonic()

    def _on_message(self, e: _Engine, fut: asyncio.Future[None]) -> None:
        try:
            kind, payload = e.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(e.conn.fileno())
            if e.outcome is None:  # died without a last word (OOM killer, segfault): its leases go back now,
                # or the other engines would wait forever on hosts it held
                freed = self.table.release_process(e.index) if self.table is not None else 0
                log.warning("engine process %d died; %d host leases it held handed back", e.index, freed)
            self.monitor.engine_finished(e.index, self.monitor.texts.get(e.index, ""))
            if not fut.done():
                fut.set_result(None)
            return
        if kind == "port":
            self.monitor.ports[e.index] = int(payload)
        elif kind == "stats":
            e.stats = payload
        elif kind == "done":
            e.outcome = payload
            e.stats = payload.stats
            self.monitor.engine_finished(e.index, payload.exposition)
        self.monitor.engines_reported([x.stats for x in self.engines])

    def _on_signal(self, sig: signal.Signals) -> None:
        # The engines run in their own process groups (a terminal's Ctrl-C reaches only this
        # process): every stop goes through here, once per engine, so a second signal still means
        # "exit at once" to them.
        if self.signalled is None:
            self.signalled = sig
            log.info("%s received: stopping %d engine processes (again to exit at once)", sig.name, self.count)
        for e in self.engines:
            if e.process.is_alive() and e.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(e.process.pid, sig)

    def _finish(self) -> int:
        outcomes = [e.outcome for e in self.engines if e.outcome is not None]
        died = [e for e in self.engines if e.outcome is None]
        aborted = [o for o in outcomes if o.error]
        stop = self.signalled
        if stop is None:
            stop = next((signal.Signals(o.signal) for o in outcomes if o.signal), None)
        if stop is not None or aborted or died:
            counts = StopCounts.sum_of([o.stopped for o in outcomes])
            log.info("%s", stop_line(stop.name if stop else "error", self.stats, counts).removeprefix("fetcher: "))
        else:
            per_image = 1000 * self.coordinator_cpu / max(self.stats.ok, 1)
            if self.cfg.monitor.log_format == "text":  # json: the progress view already wrote the summary object
                sys.stderr.write(self.stats.format() + "\n")
            tars = "/".join(str(e.stats.tars_done) for e in self.engines)
            log.info(
                "box: %d engine processes (tars written: %s), coordinator %.3f ms CPU/image",
                self.count,
                tars,
                per_image,
            )
        for o in aborted:
            log.error("%s", o.error)
        for e in died:
            log.error(
                "engine process %d died (exit %s); rerun the same command to resume its tars",
                e.index,
                e.process.exitcode,
            )
        if aborted:
            return max(o.exit_code for o in aborted)
        if died:
            return RunAborted.exit_code
        return exit_code_for(stop)


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this engine when the box parent dies (Linux), so no engine outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class Shared:
    """What the parent hands every engine: its plan's tar order and the queue's shared cursor, and the
    input files it opened (engines neither re-list nor re-read footers, and all plan the same rows)."""

    order: tuple[int, ...]
    cursor: Any  # multiprocessing.Value
    files: list[InputFile]


def engine_main(cfg: Config, index: int, handle: BoxHandle, conn: Connection, shared: Shared) -> None:
    """One engine process: the whole pipeline on the tars it takes from the box's queue, reporting to the
    box as it goes."""
    import uvloop

    _die_with_parent()
    os.setpgrp()
    setup_logging(cfg.monitor.log_format)
    table = BoxSlots.attach(handle, index)
    report = EngineReport(stats=RunStats())
    pipeline: Pipeline | None = None
    try:
        # The parent claimed the output already.
        plan = prepare(cfg, claim=False, files=shared.files)
        pipeline = Pipeline(replace(plan, feed=SharedFeed(shared.order, shared.cursor)), box=table)
        pipeline.monitor.public = False
        uvloop.run(_run_reporting(pipeline, conn))
    except (RunAborted, ConfigError) as exc:
        report.error = str(exc)
        report.exit_code = exc.exit_code if isinstance(exc, RunAborted) else 2
    finally:
        if pipeline is not None:
            report.stats = pipeline.stats
            report.exposition = pipeline.monitor.metrics.exposition().decode()
            report.stopped = pipeline.stop_counts
            report.signal = int(pipeline.stop_signal or 0)
        with contextlib.suppress(OSError):
            conn.send(("done", report))
        conn.close()
        table.close()
    sys.exit(report.exit_code if report.error else exit_code_for(pipeline.stop_signal if pipeline else None))


async def _run_reporting(pipeline: Pipeline, conn: Connection) -> None:
    """Run the pipeline; meanwhile send the box its metrics port once, then its counts every second."""
    task = asyncio.create_task(pipeline.run())
    port_sent = False
    while not task.done():
        bound = pipeline.monitor.bound
        if bound is not None and not port_sent:
            conn.send(("port", bound[1]))
            port_sent = True
        conn.send(("stats", pipeline.stats))
        await asyncio.wait({task}, timeout=REPORT_EVERY if port_sent else 0.05)
    await task
