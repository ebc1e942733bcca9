"""The load client: viewers spread over worker processes (one event loop each), driven by the parent.

The parent sends a command to every worker and gathers the answers; workers never talk to each other.
Commands: open (viewers, concurrently), reset (start a measurement window), progress, collect, viewers
(per-viewer detail), close, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.viewers import VIEWERS, GroupStats, Viewer, ViewerSpec

OPEN_TIMEOUT_S = 30.0


class _Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.viewers: list[Viewer] = []
        self.stats: dict[str, GroupStats] = defaultdict(GroupStats)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, arg = await loop.run_in_executor(None, self.conn.recv)
            if command == "exit":
                self._close()
                self.conn.send(None)
                return
            self.conn.send(await getattr(self, command)(arg))

    async def open(self, arg: tuple[list[ViewerSpec], int]) -> dict[str, Any]:
        specs, concurrency = arg
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def one(spec: ViewerSpec) -> None:
            viewer = VIEWERS[spec.kind](spec, self.stats[spec.group])
            async with gate:
                try:
                    await viewer.open(OPEN_TIMEOUT_S)
                except (OSError, TimeoutError, ConnectionError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}"[:300])
                    return
            self.viewers.append(viewer)

        await asyncio.gather(*(one(s) for s in specs))
        return {"opened": len(specs) - len(failures), "failed": len(failures), "errors": failures[:5]}

    async def reset(self, _: object) -> None:
        for stats in self.stats.values():
            stats.latencies = array("d")
            stats.delta_latencies = array("d")
            stats.messages = stats.wire_bytes = stats.gaps = stats.duplicates = stats.stale = stats.closed = 0
            stats.errors.clear()
        for viewer in self.viewers:
            viewer.frames = viewer.bytes = 0

    async def progress(self, _: object) -> dict[str, int]:
        return {group: stats.messages for group, stats in self.stats.items()}

    async def collect(self, _: object) -> dict[str, dict[str, Any]]:
        return {group: stats.as_dict() for group, stats in self.stats.items()}

    async def viewer_detail(self, group: str) -> list[dict[str, float]]:
        return [
            {
                "frames": v.frames,
                "bytes": v.bytes,
                "last_seq": v.last_seq,
                "last_rx_ms": v.last_rx_ms,
                "last_latency_ms": v.last_latency_ms,
                "cut": int(v.closing),
            }
            for v in self.viewers
            if v.spec.group == group
        ]

    async def close(self, _: object) -> int:
        count = self._close()
        await asyncio.sleep(0.2)
        return count

    def _close(self) -> int:
        count = len(self.viewers)
        for viewer in self.viewers:
            viewer.close()
        self.viewers.clear()
        self.stats.clear()
        return count


def _worker_main(conn: Connection) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_Worker(conn).run())


@dataclass(slots=True)
class Collected:
    """One group's merged results."""

    latencies: array = field(default_factory=lambda: array("d"))
    delta_latencies: array = field(default_factory=lambda: array("d"))
    messages: int = 0
    wire_bytes: int = 0
    gaps: int = 0
    duplicates: int = 0
    stale: int = 0
    closed: int = 0
    errors: list[str] = field(default_factory=list)


class LoadClient:
    """N worker processes; viewers are dealt round-robin so every worker carries a fair share."""

    def __init__(self, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), name=f"bench-viewers-{i}", daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _all(self, command: str, args: list[Any] | None = None) -> list[Any]:
        for i, conn in enumerate(self._conns):
            conn.send((command, None if args is None else args[i]))
        return [conn.recv() for conn in self._conns]

    def open(self, specs: list[ViewerSpec], concurrency: int = 64) -> dict[str, Any]:
        shares: list[list[ViewerSpec]] = [[] for _ in self._conns]
        for i, spec in enumerate(specs):
            shares[i % len(shares)].append(spec)
        answers = self._all("open", [(share, concurrency) for share in shares])
        return {
            "opened": sum(a["opened"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "errors": [e for a in answers for e in a["errors"]][:5],
        }

    def reset(self) -> None:
        self._all("reset")

    def progress(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for answer in self._all("progress"):
            for group, n in answer.items():
                total[group] += n
        return dict(total)

    def collect(self) -> dict[str, Collected]:
        merged: dict[str, Collected] = defaultdict(Collected)
        for answer in self._all("collect"):
            for group, part in answer.items():
                into = merged[group]
                into.latencies.frombytes(part["latencies"])
                into.delta_latencies.frombytes(part["delta_latencies"])
                for key in ("messages", "wire_bytes", "gaps", "duplicates", "stale", "closed"):
                    setattr(into, key, getattr(into, key) + part[key])
                into.errors.extend(part["errors"])
        return dict(merged)

    def viewer_detail(self, group: str) -> list[dict[str, float]]:
        return [row for answer in self._all("viewer_detail", [group] * len(self._conns)) for row in answer]

    def close_viewers(self) -> int:
        return sum(self._all("close"))

    def shutdown(self) -> None:
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self._all("exit")
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> LoadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
