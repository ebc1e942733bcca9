"""Server-side accounting from /proc: CPU seconds (utime + stime) and resident memory of a process."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads), in seconds (/proc/<pid>/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()  # fields[0] is field 3 (state): comm may hold spaces
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``, in seconds."""
    user, system = cpu_times(pid)
    return user + system


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (/proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rabbitmq_pid() -> int | None:
    """The RabbitMQ node's beam.smp (the one booting ``rabbit``), or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "beam.smp":
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"rabbit" in cmdline and b"boot" in cmdline:
            return int(entry.name)
    return None


def load_average() -> float:
    return os.getloadavg()[0]
