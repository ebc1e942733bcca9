"""The soak load client: logical viewers spread over worker processes (one event loop each).

The parent sends a command to every worker and gathers the answers, as benchmarks.loadgen does.
Commands: open (viewers), churn (leaves, resumes and joins for a while, in the background),
stall (stop reading for a while), dead (gateway ports that are down), behind (viewers short of the
journal's newest seq), collect (per-viewer records), close.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.soak.viewers import SoakSpec, SoakViewer, close_quietly


class _Worker:
    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.viewers: list[SoakViewer] = []
        self.dead_ports: set[int] = set()
        self.rng = random.Random(1000 + index)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.churned = {"left": 0, "resumed": 0, "joined": 0, "join_failed": 0}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, arg = await loop.run_in_executor(None, self.conn.recv)
            if command == "exit":
                await self.close(None)
                self.conn.send(None)
                return
            self.conn.send(await getattr(self, command)(arg))

    async def _open_many(self, specs: list[SoakSpec], concurrency: int) -> tuple[int, list[str]]:
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def one(spec: SoakSpec) -> None:
            viewer = SoakViewer(spec, self.dead_ports)
            async with gate:
                try:
                    await viewer.open()
                except (OSError, TimeoutError, ConnectionError) as exc:
                    failures.append(f"{spec.kind} {type(exc).__name__}: {exc}"[:200])
                    viewer.close()
                    return
            self.viewers.append(viewer)

        await asyncio.gather(*(one(s) for s in specs))
        return len(specs) - len(failures), failures

    async def open(self, arg: tuple[list[SoakSpec], int]) -> dict[str, Any]:
        specs, concurrency = arg
        opened, failures = await self._open_many(specs, concurrency)
        return {"opened": opened, "failed": len(failures), "errors": failures[:5]}

    async def churn(self, arg: dict[str, Any]) -> None:
        """In the background for ``seconds``: every ``every_s``, some viewers leave, reload or join."""
        task = asyncio.get_running_loop().create_task(self._churn(**arg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _churn(self, seconds: float, every_s: float, per_tick: int, joiners: list[SoakSpec]) -> None:
        deadline = time.monotonic() + seconds
        pending = list(joiners)
        while time.monotonic() < deadline:
            await asyncio.sleep(every_s)
            live = [v for v in self.viewers if v.connected and v.left_at_seq is None and not v.spec.rcvbuf]
            self.rng.shuffle(live)
            for viewer in live[:per_tick]:
                viewer.leave()
                self.churned["left"] += 1
            for viewer in live[per_tick : 2 * per_tick]:
                await viewer.leave_and_resume(self.rng.uniform(0.2, 1.5))
                self.churned["resumed"] += 1
            batch, pending = pending[:per_tick], pending[per_tick:]
            opened, failures = await self._open_many(batch, 16)
            self.churned["joined"] += opened
            self.churned["join_failed"] += len(failures)

    async def stall(self, arg: tuple[int, float]) -> int:
        count, seconds = arg
        candidates = [v for v in self.viewers if v.connected and v.left_at_seq is None and v.spec.rcvbuf]
        self.rng.shuffle(candidates)
        for viewer in candidates[:count]:
            viewer.stall(seconds)
        return min(count, len(candidates))

    async def dead(self, ports: list[int]) -> None:
        self.dead_ports.clear()
        self.dead_ports.update(ports)

    async def behind(self, newest: dict[str, int]) -> dict[str, int]:
        """How many viewers still watching have not reached the newest seq of their conversation."""
        short = connected = 0
        for viewer in self.viewers:
            if viewer.left_at_seq is not None or viewer.gave_up:
                continue
            connected += viewer.connected
            if (viewer.last_seq or 0) < newest.get(viewer.spec.conversation, 0):
                short += 1
        return {"behind": short, "connected": connected, "viewers": len(self.viewers)}

    async def collect(self, _: object) -> dict[str, Any]:
        return {"viewers": [v.record() for v in self.viewers], "churn": dict(self.churned)}

    async def close(self, _: object) -> int:
        for task in list(self.tasks):
            task.cancel()
        count = len(self.viewers)
        await close_quietly(self.viewers)
        self.viewers.clear()
        self.churned = dict.fromkeys(self.churned, 0)
        return count


def _worker_main(conn: Connection, index: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_Worker(conn, index).run())


class SoakClient:
    """N worker processes; viewers dealt round-robin."""

    def __init__(self, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, i), name=f"soak-viewers-{i}", daemon=True)
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

    def _deal(self, specs: list[SoakSpec]) -> list[list[SoakSpec]]:
        shares: list[list[SoakSpec]] = [[] for _ in self._conns]
        for i, spec in enumerate(specs):
            shares[i % len(shares)].append(spec)
        return shares

    def open(self, specs: list[SoakSpec], concurrency: int = 48) -> dict[str, Any]:
        answers = self._all("open", [(share, concurrency) for share in self._deal(specs)])
        return {
            "opened": sum(a["opened"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "errors": [e for a in answers for e in a["errors"]][:5],
        }

    def churn(self, seconds: float, every_s: float, per_tick: int, joiners: list[SoakSpec]) -> None:
        shares = self._deal(joiners)
        self._all(
            "churn", [{"seconds": seconds, "every_s": every_s, "per_tick": per_tick, "joiners": s} for s in shares]
        )

    def stall(self, count: int, seconds: float) -> int:
        per = max(1, count // len(self._conns))
        return sum(self._all("stall", [(per, seconds)] * len(self._conns)))

    def dead(self, ports: list[int]) -> None:
        self._all("dead", [ports] * len(self._conns))

    def behind(self, newest: dict[str, int]) -> dict[str, int]:
        total = {"behind": 0, "connected": 0, "viewers": 0}
        for answer in self._all("behind", [newest] * len(self._conns)):
            for key in total:
                total[key] += answer[key]
        return total

    def collect(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        answers = self._all("collect")
        churn: dict[str, int] = {}
        for a in answers:
            for key, value in a["churn"].items():
                churn[key] = churn.get(key, 0) + value
        return [v for a in answers for v in a["viewers"]], churn

    def close(self) -> int:
        return sum(self._all("close"))

    def shutdown(self) -> None:
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self._all("exit")
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> SoakClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
