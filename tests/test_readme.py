"""Every Python block of the README runs as written, in README order, in one namespace.

The blocks name things a reader brings (a checkpoint path, texts, the stack under test); they
are provided here: a small random BERT with a word-level tokenizer (sizes that ZeroQuant's 48
row groups divide), sentences over its vocabulary, and ``my_stack``, a faithful implementation
of ONNX's QuantizeLinear / DequantizeLinear written from the ONNX spec, so the hypothesis
example must pass against it."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import refquant as rq
from weights_io import write_safetensors

ROOT = Path(__file__).resolve().parents[1]
F32 = np.float32
WORDS = ("the a one two red blue cat dog sat ran on under mat hill quick slow and then it was "
         "small large bird fish swam flew over near").split()


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.+?)```", (ROOT / "README.md").read_text(), re.S)


def small_bert(directory: Path) -> Path:
    """A random BERT (hidden 48, FFN 96, 2 layers) with a WordLevel tokenizer.json."""
    rng = np.random.default_rng(0)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
    C, I, L, H, V, P = 48, 96, 2, 4, len(vocab), 64

    def rnd(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(F32)

    t = {"embeddings.word_embeddings.weight": rnd(V, C, scale=1.0),
         "embeddings.position_embeddings.weight": rnd(P, C), "embeddings.token_type_embeddings.weight": rnd(2, C),
         "embeddings.LayerNorm.weight": 1 + rnd(C), "embeddings.LayerNorm.bias": rnd(C)}
    for i in range(L):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (C, C), "attention.self.key": (C, C),
                             "attention.self.value": (C, C), "attention.output.dense": (C, C),
                             "intermediate.dense": (I, C), "output.dense": (C, I)}.items():
            t[p + name + ".weight"], t[p + name + ".bias"] = rnd(o, n), rnd(o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"], t[p + ln + ".bias"] = 1 + rnd(C), rnd(C)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(dict(
        model_type="bert", vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H,
        intermediate_size=I, hidden_act="gelu", max_position_embeddings=P, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=0)))
    (directory / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}))
    write_safetensors(directory / "model.safetensors", t)
    return directory


class OnnxQuantizeDequantize:
    """ONNX QuantizeLinear then DequantizeLinear (onnx/defs/quantization/defs.cc, opset 21):
    y = saturate(rint(x / y_scale) + y_zero_point) on the zero point's type's range, with a
    1-D scale laid along ``axis``; then (y - zero_point) * scale in float32."""

    @staticmethod
    def fake_quant(x, scale, zero_point, axis=None, qmin=0, qmax=255):
        shape = [1] * x.ndim
        if np.ndim(scale):
            shape[axis] = -1
        s = np.asarray(scale, F32).reshape(shape)
        zp = np.asarray(zero_point, np.int32).reshape(shape)
        q = np.clip(np.rint(x / s).astype(np.int32) + zp, qmin, qmax)
        return (q - zp).astype(F32) * s


def test_the_readme_has_python_blocks_for_each_documented_api():
    code = "\n".join(readme_python_blocks())
    for name in ("rq.kernels.quantize_linear_i8", "quant_specs(", "rq.quantize_model", "rq.load_quantized",
                 "lkd(", "rq.analysis.sensitivity", "rq.calib.make_observer"):
        assert name in code, name


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    pytest.importorskip("hypothesis")
    pytest.importorskip("numba_cuda", reason="the GPU block runs in numba-cuda's simulator")
    monkeypatch.chdir(tmp_path)   # the blocks write files (qm.save) into the working directory
    path = small_bert(tmp_path / "bert")
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(256)]
    m = rq.load(path)
    batch = m.encode(texts[:3])
    w = (rng.standard_normal((96, 48)) * 0.1).astype(F32)
    w_qp = rq.choose_qparams(w, rq.dialect("deepspeed", granularity="channel", axis=0))
    given = {"rq": rq, "np": np, "path": path, "texts": texts, "my_stack": OnnxQuantizeDequantize, "m": m,
             "data": [m.encode(texts[i:i + 8]) for i in range(64, 96, 8)],
             "ids": batch["input_ids"], "mask": batch["attention_mask"],
             "x": rng.standard_normal((5, 48)).astype(F32), "w_q": rq.quantize(w, w_qp),
             "s_w": np.asarray(w_qp.scale, F32), "bias": rng.standard_normal(96).astype(F32)}
    ns = {}
    blocks = readme_python_blocks()
    for i, block in enumerate(blocks):
        ns.update(given)   # what the reader brings; what blocks define (qm, ...) carries over
        code = block.replace('"path/to/checkpoint_dir"', "path")
        exec(compile(code, f"README.md python block {i + 1} of {len(blocks)}", "exec"), ns)
        if "test_my_fake_quant" in ns:          # the hypothesis example defines a test: run it
            ns.pop("test_my_fake_quant")()
    assert isinstance(ns["y"], np.ndarray) and ns["y"].dtype == F32      # the GPU block's outputs
    assert ns["out"].shape == (*ns["ids"].shape, 48)
    assert (tmp_path / "minilm-w8a8" / "config.json").exists()


def test_documented_names_are_reachable_after_import_refquant_alone():
    """In a fresh interpreter (inside pytest other tests import the submodules first)."""
    import subprocess
    import sys
    code = ("import sys, refquant as rq\n"
            "names = ['kernels.quantize_linear_i8', 'kernels.linear_i8', 'kernels.gemm_i8', 'calib.make_observer',\n"
            "         'calib.observer', 'models.mean_pool', 'analysis.sensitivity', 'analysis.perplexity']\n"
            "for name in names:\n"
            "    mod, attr = name.split('.')\n"
            "    getattr(getattr(rq, mod), attr)\n"
            "assert 'refquant.kernels.cuda' not in sys.modules, 'the CUDA backend must be imported lazily'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
