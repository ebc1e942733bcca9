"""py-spy sampling of a server while a scenario runs: a flame graph (SVG) and top hotspots from raw stacks."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Recording:
    """Two py-spy samplers on ``pid`` (raw stacks for the numbers, SVG for people) until ``stop``."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy not installed: pip install py-spy (the bench extra has it)")
        self.raw = out.with_suffix(".txt")
        self.svg = out.with_suffix(".svg")
        common = ["record", "--pid", str(pid), "--rate", str(rate), "--duration", "600"]
        self._procs = [
            subprocess.Popen(
                [binary, *common, "--format", "raw", "-o", str(self.raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [binary, *common, "--format", "flamegraph", "-o", str(self.svg)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        time.sleep(0.5)  # attach before the traffic starts

    def stop(self) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _frame_name(frame: str) -> str:
    """``send (websockets/protocol.py:123)`` → ``send (websockets/protocol.py)``, with site-packages trimmed."""
    frame = _LINE.sub(")", frame)
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            frame = head + "(" + tail.split(marker, 1)[-1]
    return frame


def hotspots(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {"samples": 0, "self": [], "self_by_file": [], "inclusive": [], "inclusive_gateway": []}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        leaf_file = frames[-1].rpartition("(")[2].rstrip(")")
        by_file[leaf_file] += count
        for name in set(frames):
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    ours = Counter({n: c for n, c in inclusive.items() if "(gateway/" in n and "(gateway/cli.py)" not in n})
    return {
        "samples": total,
        "self": share(own),
        "self_by_file": share(by_file),
        "inclusive": share(inclusive),
        "inclusive_gateway": share(ours),
    }
