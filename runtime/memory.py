"""This process's memory, as `bench` reports it: peak resident memory (RSS) and peak anonymous memory.

RSS counts every page the process has mapped: the weights file's pages it has read (page cache the
kernel can evict and other processes share) and its anonymous memory (copies, activations, what
runs a machine out of memory). Linux keeps the peak RSS (VmHWM) but not the peak anonymous memory,
so a thread samples /proc/self/status every few milliseconds. Imports nothing of ours: benchmarks load
this file by path to measure other revisions of the package with it.
"""

from __future__ import annotations

import threading
from pathlib import Path

FIELDS = ("RssAnon", "VmRSS")


def status_kib(fields=FIELDS) -> dict[str, int]:
    """The given fields of /proc/self/status in KiB ({} where there is none, e.g. off Linux)."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values


def children_anon_kib() -> int:
    """The summed RssAnon (KiB) of this process's direct children, e.g. the pre-packed cache's builder
    (runtime/onnx_prepacked.py), which a first open runs in a child process; 0 where there is none."""
    total = 0
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
            except OSError:  # it ended between the two reads
                pass
    return total


def pss_kib() -> dict[str, int]:
    """{"Pss": proportional set size in KiB} from /proc/self/smaps_rollup: a page this process shares
    with others (a file mapped by two sessions or two processes) counts once, divided among them."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return {"Pss": next(int(line.split()[1]) for line in f if line.startswith("Pss:"))}
    except (OSError, StopIteration):
        return {}


class PeakMemory:
    """Peak RssAnon / VmRSS (and with pss=True, Pss) in KiB while the block runs:
    `with PeakMemory() as peak: ...; peak.anon_mib`. Pss walks every mapping: sampled less often.
    children=True also samples the direct children's summed RssAnon (`children_anon_mib`) and the
    peak of this process's and theirs together (`total_anon_mib`): what a first open that builds the
    cache in a child process takes from the machine."""

    def __init__(self, interval_s: float = 0.003, pss: bool = False, children: bool = False):
        self.interval = interval_s
        self.pss = pss
        self.children = children
        self._samples = 0
        self.peak = {**status_kib(), **(pss_kib() if pss else {})}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, final: bool = False) -> None:
        values = status_kib()
        self._samples += 1
        if self.pss and (final or self._samples % 8 == 0):
            values.update(pss_kib())
        if self.children:
            values["ChildrenAnon"] = children_anon_kib()
            values["TotalAnon"] = values["ChildrenAnon"] + values.get("RssAnon", 0)
        for key, value in values.items():
            self.peak[key] = max(self.peak.get(key, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "PeakMemory":
        self._thread.start()
        return self

    def stop(self) -> "PeakMemory":
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample(final=True)
        return self

    def __enter__(self) -> "PeakMemory":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def anon_mib(self) -> float:
        return self.peak.get("RssAnon", 0) / 1024

    @property
    def children_anon_mib(self) -> float:
        return self.peak.get("ChildrenAnon", 0) / 1024

    @property
    def total_anon_mib(self) -> float:
        return self.peak.get("TotalAnon", self.peak.get("RssAnon", 0)) / 1024

    @property
    def pss_mib(self) -> float | None:
        return self.peak["Pss"] / 1024 if "Pss" in self.peak else None

    @property
    def rss_mib(self) -> float:
        """The sampled peak RSS (the process's own peak since it started is `process_peak_rss_mib`)."""
        return self.peak.get("VmRSS", 0) / 1024


def process_peak_rss_mib() -> float | None:
    """This process's peak RSS since it started (VmHWM: exact, no sampling), or None off Linux."""
    peak = status_kib(("VmHWM",)).get("VmHWM")
    return None if peak is None else peak / 1024
