"""What contract rule 12 (one NaN, 0x7FC00000) would cost if every float op of refquant.nn
canonicalized its output, on all-MiniLM-L6-v2's forward (batch 8 x 128).

Every nn op a BERT forward calls (embedding, LayerNorm, residual + LayerNorm, linear, head
split, attention, GELU: 75 outputs, 36.6 M float32 values) gets ``refquant.floats.canonical_nan``
on its output; the forward runs with and without it, alternating, and the medians are compared
in wall time and in CPU time (all threads; steadier on a shared machine). refquant applies the
rule per op only where that costs about nothing (the kernels' stores, fast_erf's GELU / erf),
and otherwise at each model's forward output and in the golden dump (docs/contract.md rule
12): this script is the measurement behind that choice. It also times what ships, the one
canonical_nan on the forward's output.
Run: python validation/bench/nan_per_op.py [reps]   (writes validation/results/nan_per_op.txt)
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

import refquant as rq
import refquant.models.base as base_module
import refquant.models.bert as bert_module
from refquant.compare_dialects import default_checkpoint
from refquant.floats import canonical_nan

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = ("embedding_forward", "layer_norm_forward", "residual_layer_norm_forward", "gelu_erf_forward",
       "attention_forward")
LINES: list = []


def out(line: str) -> None:
    print(line, flush=True)
    LINES.append(line)


class PerOp:
    """Installs / removes canonical_nan at the output of every nn op the BERT forward calls."""

    def __init__(self):
        self.plain = {name: getattr(bert_module, name) for name in OPS}
        self.plain_split = bert_module.split_heads
        self.plain_linear = base_module.linear_forward
        self.outputs = self.values = 0

    def _count(self, y):
        self.outputs += 1
        self.values += y.size
        return canonical_nan(y)

    def install(self, on: bool) -> None:
        def with_cache(fn):
            return lambda *a, **k: (lambda y, cache: (self._count(y), cache))(*fn(*a, **k))
        for name in OPS:
            setattr(bert_module, name, with_cache(self.plain[name]) if on else self.plain[name])
        bert_module.split_heads = (lambda *a: self._count(self.plain_split(*a))) if on else self.plain_split
        base_module.linear_forward = with_cache(self.plain_linear) if on else self.plain_linear


def main(reps: int) -> None:
    model = rq.load(default_checkpoint())
    texts = ["Quantization maps real values to integers, and refquant defines every bit of it. " * 6] * 8
    batch = model.encode(texts, pad_to=128)
    ids, mask = batch["input_ids"][:, :128], batch["attention_mask"][:, :128]
    per_op = PerOp()
    per_op.install(True)
    canon = model.forward(ids, mask)
    per_op.install(False)
    plain = model.forward(ids, mask)
    assert np.array_equal(plain.view(np.uint32), canon.view(np.uint32))
    out(f"MiniLM forward [8 x 128]: {per_op.outputs} nn op outputs, {per_op.values / 1e6:.1f} M float32 values")
    wall = {True: [], False: []}
    cpu = {True: [], False: []}
    for _ in range(reps):
        for on in (False, True):
            per_op.install(on)
            c, t = time.process_time(), time.perf_counter()
            model.forward(ids, mask)
            wall[on].append(time.perf_counter() - t)
            cpu[on].append(time.process_time() - c)
    per_op.install(False)
    for label, times in (("wall", wall), ("CPU ", cpu)):
        off, on = statistics.median(times[False]), statistics.median(times[True])
        out(f"  {label} median of {reps}: plain {off * 1e3:.1f} ms, canonical_nan at every op {on * 1e3:.1f} ms: "
            f"{100 * (on / off - 1):+.2f} %")
    y = model.forward(ids, mask)
    ts = []
    for _ in range(50):
        t = time.perf_counter()
        canonical_nan(y)
        ts.append(time.perf_counter() - t)
    out(f"  what ships, canonical_nan at the forward's output {list(y.shape)}: {statistics.median(ts) * 1e6:.0f} us "
        f"({100 * statistics.median(ts) / statistics.median(wall[False]):.3f} % of the forward)")
    out(f"  load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    path = os.path.join(os.path.dirname(HERE), "results", "nan_per_op.txt")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(LINES) + "\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
