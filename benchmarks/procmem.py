"""Memory of a process tree, read from Linux's /proc (no psutil needed): the helpers the
benchmarks under benchmarks/ share.

* `TreeSampler` samples, every `interval` seconds, the RSS and PSS summed over a process and
  all its descendants (Ray's raylet, GCS and workers; a reparented descendant seen once is
  still counted while it lives) and keeps the peaks. PSS splits shared pages (Ray's object
  store in /dev/shm, shared libraries) between the processes that map them, so the PSS sum
  counts them once; the RSS sum counts them in every process.
* `status_kb(pid)` gives one process's VmRSS / VmHWM (its own peak RSS, kept by the kernel).

Sampled peaks can miss a spike shorter than the interval; VmHWM cannot, but is per process.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def parse_status(text: str) -> dict[str, int]:
    """The `kB` fields of /proc/PID/status (VmRSS, VmHWM, ...), in kB."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def parse_stat(text: str) -> tuple[str, int, int, int]:
    """(comm, ppid, starttime, utime + stime in clock ticks) from /proc/PID/stat (comm may
    hold spaces and parentheses)."""
    head, _, tail = text.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    # fields[0] is stat's field 3 (state): ppid is field 4, utime/stime 14/15, starttime 22
    return comm, int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12])


def descendants(root: int, ppid: dict[int, int]) -> set[int]:
    """`root` and every process below it, from a pid -> parent pid map."""
    kids: dict[int, list[int]] = {}
    for pid, parent in ppid.items():
        kids.setdefault(parent, []).append(pid)
    out, todo = {root}, [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):  # the process ended, or no permission
        return None


def processes() -> dict[int, tuple[str, int, int, int]]:
    """pid -> (comm, ppid, starttime, CPU ticks) of every process now."""
    out = {}
    for d in PROC.iterdir():
        if d.name.isdigit():
            text = _read(d / "stat")
            if text:
                out[int(d.name)] = parse_stat(text)
    return out


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of `pid` in kB ({} if it is gone)."""
    text = _read(PROC / str(pid) / "status")
    return parse_status(text) if text else {}


def pss_kb(pid: int) -> int | None:
    """Proportional set size of `pid` in kB (None if unreadable)."""
    text = _read(PROC / str(pid) / "smaps_rollup")
    return parse_status(text).get("Pss") if text else None


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(x) for x in (PROC / "loadavg").read_text().split()[:3]]


def mem_total_gib() -> float:
    return parse_status((PROC / "meminfo").read_text())["MemTotal"] / 2**20


@dataclass
class TreeSampler:
    """Samples the memory of `root` and its descendants in a thread until `stop()`."""

    root: int
    interval: float = 0.5
    pss: bool = True
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_procs: int = 0
    samples: int = 0
    #: (pid, starttime) -> (comm, peak RSS kB) of every process seen in the tree
    seen: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)
    #: (pid, starttime) -> CPU ticks (user + system) at the last sample
    cpu: dict[tuple[int, int], int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        procs = processes()
        tree = descendants(self.root, {p: v[1] for p, v in procs.items()})
        # descendants reparented away from the tree (daemonised) still count while alive
        tree |= {p for (p, st) in self.seen if p in procs and procs[p][2] == st}
        rss = pss = 0
        n = 0
        for pid in tree:
            if pid not in procs:
                continue
            s = status_kb(pid)
            if "VmRSS" not in s:  # gone, or a kernel thread
                continue
            n += 1
            rss += s["VmRSS"]
            key = (pid, procs[pid][2])
            old = self.seen.get(key, ("", 0))[1]
            self.seen[key] = (procs[pid][0], max(old, s["VmRSS"]))
            self.cpu[key] = procs[pid][3]
            if self.pss:
                pss += pss_kb(pid) or 0
        self.samples += 1
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_procs = max(self.peak_procs, n)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        by_name: dict[str, int] = {}
        for comm, peak in self.seen.values():
            by_name[comm] = max(by_name.get(comm, 0), peak)
        return {
            "peak_tree_rss_mib": self.peak_rss_kb / 1024,
            "peak_tree_pss_mib": self.peak_pss_kb / 1024 if self.pss else None,
            "peak_processes": self.peak_procs,
            "processes_seen": len(self.seen),
            # CPU of the tree's processes as last sampled (what a process used after the
            # last sample before it ended is missed)
            "cpu_s": sum(self.cpu.values()) / os.sysconf("SC_CLK_TCK"),
            "samples": self.samples,
            "interval_s": self.interval,
            "peak_rss_mib_by_name": {k: v / 1024 for k, v in sorted(by_name.items())},
        }

    def alive(self) -> list[int]:
        """Pids of processes seen in the tree that still run (e.g. left behind)."""
        procs = processes()
        return [p for (p, st) in self.seen if p in procs and procs[p][2] == st]


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def cpu_model() -> str:
    for line in (PROC / "cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "mem_gib": round(mem_total_gib(), 1),
    }
