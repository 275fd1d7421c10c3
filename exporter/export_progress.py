"""The export's progress bars (tqdm) and its timings per phase and per layer."""

from __future__ import annotations

import time


class ExportProgress:
    """tqdm bars: tracing (layer i of N) and weights (MB written, layer i of N) per graph; also keeps
    `timings`: {"<graph>.<phase>": seconds} for the phases trace / passes / weights, and per layer
    {"<graph>.trace_layers": [s, ...], "<graph>.weights_layers": [s, ...]} (tracing's Python pass and
    weight streaming attributed to the layer they belong to)."""

    def __init__(self, model, enabled: bool):
        from tqdm.auto import tqdm

        self.tqdm, self.enabled, self.layers = tqdm, enabled, len(model.layers)
        self.bar = None
        self.timings: dict = {}
        self._phase: tuple[str, float] | None = None
        self._mark = 0.0

    def _start(self, phase: str) -> None:
        now = time.perf_counter()
        if self._phase is not None:
            name, began = self._phase
            self.timings[name] = self.timings.get(name, 0.0) + now - began
        self._phase, self._mark = (phase, now) if phase else None, now

    def _new(self, **kw):
        if self.bar is not None:
            self.bar.close()
        self.bar = self.tqdm(disable=not self.enabled, dynamic_ncols=True, **kw)

    def tracing(self, graph: str):
        self._start(f"{graph}.trace")
        self._new(total=self.layers, desc=f"trace {graph}", unit="layer")
        per_layer = self.timings.setdefault(f"{graph}.trace_layers", [0.0] * self.layers)

        last = []

        def on_layer(i: int) -> None:  # i: a traced layer (one per kind when stitched: exporter/stitch.py)
            now = time.perf_counter()
            if last:
                per_layer[last[-1]] += now - self._mark
            last.append(i)
            self._mark = now
            self.bar.n = i + 1
            self.bar.set_postfix_str(f"layer {i + 1} of {self.layers}", refresh=True)

        return on_layer

    def step(self, what: str) -> None:
        self._start(what.replace(": ", "."))
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=True)

    def writing(self, graph: str, total: int) -> None:
        self._start(f"{graph}.weights")
        self._graph = graph
        self.timings.setdefault(f"{graph}.weights_layers", [0.0] * self.layers)
        self._new(total=total, desc=f"weights {graph}", unit="B", unit_scale=True, unit_divisor=1024)

    def wrote(self, name: str, nbytes: int) -> None:
        now = time.perf_counter()
        layer = int(name.split(".")[1]) if name.startswith("layers.") else None
        if layer is not None:
            self.timings[f"{self._graph}.weights_layers"][layer] += now - self._mark
        self._mark = now
        self.bar.update(nbytes)
        self.bar.set_postfix_str(f"layer {layer + 1} of {self.layers}" if layer is not None else name.split(".")[0], refresh=False)

    def bytes_bar(self, desc: str, total: int):
        """A bar over `total` bytes; returns its update function."""
        self._start(desc)
        self._new(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
        return self.bar.update

    def close(self) -> None:
        self._start("")
        if self.bar is not None:
            self.bar.close()
            self.bar = None
