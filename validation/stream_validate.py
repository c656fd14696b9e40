"""Validate a checkpoint larger than the memory the process may use (issue 6, streaming).

1. Writes a GPT-2-shaped float32 checkpoint of about 5.3 GB (n_embd 2048, 24 layers, 16 heads,
   vocab 50257: 1.31e9 parameters, N(0, 0.02) weights from a fixed seed) tensor by tensor, so
   this script never holds more than one tensor either.
2. Runs ``python -m refquant.validate CKPT --ids ids.npy --recipe zeroquant-w8a8`` in a child
   process whose address space is limited (RLIMIT_AS, as ``ulimit -v``) to 70 % of the checkpoint's
   size: loading it whole could not even be mapped. validate sees the limit and streams the
   weights (each read when a site needs it and freed after).
3. Prints the child's exit status, its report's first lines, its peak resident memory
   (ru_maxrss) and the times, and writes them to validation/results/stream_validate.txt.

Run: /work/venv/bin/python validation/stream_validate.py [WORKDIR]  (default: a temporary
directory, removed afterwards; needs ~5.5 GB of disk).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "stream_validate.txt"
CONFIG = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 2048, "n_layer": 24,
          "n_head": 16, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
          "tie_word_embeddings": True}
LIMIT_FRACTION = 0.7


def tensor_shapes(cfg) -> dict:
    C, V, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        for name, shape in {"ln_1.weight": (C,), "ln_1.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
                            "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
                            "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                            "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
                            "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}.items():
            shapes[p + name] = shape
    return shapes


def write_checkpoint(directory: Path) -> int:
    """config.json + model.safetensors, written one tensor at a time; returns the file size."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    shapes = tensor_shapes(CONFIG)
    header, offset = {}, 0
    for name in sorted(shapes):
        n = 4 * int(np.prod(shapes[name]))
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    path = directory / "model.safetensors"
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in sorted(shapes):
            shape = shapes[name]
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                data = np.ones(shape, np.float32)
            elif len(shape) == 1:
                data = np.zeros(shape, np.float32)
            else:
                data = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
            f.write(data.astype("<f4").tobytes())
    return path.stat().st_size


def main() -> int:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="refquant-stream-"))
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)
    try:
        t = time.perf_counter()
        size = write_checkpoint(work / "gpt2-1.3b")
        out(f"checkpoint: GPT-2-shaped, n_embd {CONFIG['n_embd']}, {CONFIG['n_layer']} layers, vocab "
            f"{CONFIG['vocab_size']}: {size / 2**30:.2f} GiB float32 (written in {time.perf_counter() - t:.0f} s)")
        ids = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], size=(2, 32))
        np.save(work / "ids.npy", ids)
        limit = int(LIMIT_FRACTION * size)

        def limit_memory():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cmd = [sys.executable, "-m", "refquant.validate", str(work / "gpt2-1.3b"), "--ids", str(work / "ids.npy"),
               "--recipe", "zeroquant-w8a8", "--json", str(work / "report.json")]
        out(f"child: {' '.join(cmd[1:])}")
        out(f"child address-space limit (RLIMIT_AS, ulimit -v): {limit / 2**30:.2f} GiB = {LIMIT_FRACTION:.0%} of the checkpoint")
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit_memory,
                           cwd=HERE.parent, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
        wall = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        out(f"child exit status {r.returncode} after {wall:.0f} s; peak resident memory {peak / 2**30:.2f} GiB "
            f"({peak / size:.0%} of the checkpoint)")
        for line in r.stdout.splitlines()[:8]:
            out("  | " + line)
        if r.returncode != 0:
            out("  stderr: " + r.stderr.strip()[-2000:])
        else:
            report = json.loads((work / "report.json").read_text())
            m = report["recipes"][0]["model"]
            out(f"zeroquant-w8a8 on random weights: top-1 agreement {m['top1_agreement']:.3f}, logit KL "
                f"{m['logit_kl']:.4f}; {len(report['recipes'][0]['sites'])} sites reported")
        RESULT.write_text("\n".join(lines) + "\n")
        print(f"written to {RESULT}")
        return 0 if r.returncode == 0 else 1
    finally:
        if len(sys.argv) <= 1:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
