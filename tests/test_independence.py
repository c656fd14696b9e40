"""Contract rule 16: a golden byte depends on the checkpoint, the input sequence, the recipe and
the refquant version, nothing else. Byte comparisons (never tolerances) of

(a) OpenBLAS core types this CPU can run, (b) 1, 2 and 3 threads, (c) Numba compiled for a
    generic x86-64 target and for the host: ``python -m refquant.validate --dump`` in a fresh
    process per setting, the dump files compared byte for byte, on small random BERT / GPT-2 /
    Llama (grouped-query) checkpoints and on MiniLM when installed;
(d) each sequence alone, inside batches of other sequences, in another order and with longer
    padding: the real tokens' float and quantized outputs and golden site tensors;
(e) the numpy, numba and (simulated) cuda backends: every golden tensor.
"""
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import refquant as rq
import weights_io
from refquant.validate import golden_tensors
from test_models_minilm import MINILM
from test_models_small import bert_checkpoint, gpt2_checkpoint, llama_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# One process per setting runs every job; the last line hashes an OpenBLAS float32 product, to
# show that the setting did change what BLAS computes (the dumps must not change).
RUNNER = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from refquant import validate
    for ckpt, ids, recipe, out in json.loads(sys.argv[1]):
        rc = validate.main([ckpt, "--ids", ids, "--recipe", recipe, "--dump", out, "--dump-sequences", "4"])
        assert rc == 0, (ckpt, rc)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 999)).astype(np.float32)
    b = rng.standard_normal((999, 80)).astype(np.float32)
    print("BLAS", hashlib.sha256((a @ b).tobytes()).hexdigest())
""")


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def openblas_core_types() -> list:
    """OpenBLAS kernels (OPENBLAS_CORETYPE) this CPU can execute."""
    flags = cpu_flags()
    kinds = ["Nehalem"]
    if "avx" in flags:
        kinds.append("Sandybridge")
    if {"avx2", "fma"} <= flags:
        kinds += ["Haswell", "Zen"]
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        kinds.append("SkylakeX")
    return kinds


def sequences(rng, vocab, lengths):
    return [rng.integers(1, vocab, size=n) for n in lengths]


def batch_of(seqs, width=None, family="gpt2"):
    width = width or max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int64)
    mask = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        out["token_type_ids"] = np.zeros_like(ids)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(family, checkpoint dir, ids file, recipe) for the CLI runs: three tiny random models
    (sequences of different lengths, so the dumps hold padding) and MiniLM when installed."""
    d = tmp_path_factory.mktemp("independence")
    rng = np.random.default_rng(7)
    jobs = []
    for family, make, vocab in (("bert", bert_checkpoint, 60), ("gpt2", gpt2_checkpoint, 40),
                                ("llama", llama_checkpoint, 50)):
        path = make(d / family)[0]
        b = batch_of(sequences(rng, vocab, [9, 4, 7, 1, 6]))
        weights_io.write_safetensors(d / f"{family}_ids.safetensors",
                                     {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
        jobs.append((family, str(path), str(d / f"{family}_ids.safetensors"), "nvidia-ptq-max"))
    if MINILM is not None:
        model = rq.load(MINILM)
        b = model.encode(["The quick brown fox jumps over the lazy dog.", "A golden reference.",
                          "Integer quantization of transformers, layer by layer, bit for bit.", "Hi"])
        weights_io.write_safetensors(d / "minilm_ids.safetensors",
                                     {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
        jobs.append(("minilm", str(MINILM), str(d / "minilm_ids.safetensors"), "zeroquant-w8a8"))
    return d, jobs


def run_setting(d, jobs, name, env_changes):
    out = d / name
    out.mkdir(exist_ok=True)
    spec = [(ckpt, ids, recipe, str(out / f"{family}.safetensors")) for family, ckpt, ids, recipe in jobs]
    env = {**os.environ, **env_changes}
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(spec)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=1200)
    assert r.returncode == 0, (name, r.stderr[-3000:])
    blas = [ln for ln in r.stdout.splitlines() if ln.startswith("BLAS ")][-1].split()[1]
    return {family: (out / f"{family}.safetensors").read_bytes() for family, *_ in jobs}, blas


def test_dumps_are_the_same_bytes_on_every_blas_kernel_thread_count_and_numba_target(checkpoints, tmp_path):
    d, jobs = checkpoints
    settings = {"base": {"NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"},
                "1 thread": {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                "3 threads": {"NUMBA_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"},
                # a fresh cache: every kernel compiled for a CPU without SSE4 / AVX / FMA / AVX-512
                "numba generic": {"NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path / "generic-cache")}}
    for kind in openblas_core_types():
        settings[f"OpenBLAS {kind}"] = {"OPENBLAS_CORETYPE": kind}
    results = {name: run_setting(d, jobs, name.replace(" ", "_"), env) for name, env in settings.items()}
    base, base_blas = results["base"]
    for name, (dumps, _) in results.items():
        for family, data in dumps.items():
            assert data == base[family], f"{family}: the dump under {name!r} differs from the base run"
    if "OpenBLAS Haswell" in results and "OpenBLAS Sandybridge" in results:
        # the test has teeth: these two kernels round a float32 GEMM differently (FMA or not)
        assert results["OpenBLAS Haswell"][1] != results["OpenBLAS Sandybridge"][1]


# -- (d) batch composition ------------------------------------------------------------------

def tiny_models(tmp_path):
    yield "bert", rq.load(bert_checkpoint(tmp_path / "bert")[0]), 60
    yield "gpt2", rq.load(gpt2_checkpoint(tmp_path / "gpt2")[0]), 40
    yield "llama", rq.load(llama_checkpoint(tmp_path / "llama")[0]), 50


def real_rows(name, tensor, b, n, B, T):
    """The rows of sequence b's n real tokens in golden tensor ``name`` of a [B, T] batch: model
    outputs are [B, T, ...], site tensors [B * T, ...] (acc per input group [G, B * T, N]);
    weights, weight steps and per-tensor steps are the site's own."""
    field = name.rsplit("/", 1)[-1]
    if field in ("weight", "weight_step"):
        return tensor
    if name.count("/") == 1:  # "float/output", "RECIPE/output"
        return tensor[b, :n]
    if field == "acc" and tensor.ndim == 3:
        return tensor[:, b * T:b * T + n]
    if tensor.shape[0] == B * T and B * T > 1:
        return tensor[b * T:b * T + n]
    return tensor


def assert_same_bits(a, b, what):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape)
    assert a.tobytes() == b.tobytes(), f"{what}: {np.count_nonzero(a != b)} of {a.size} elements differ"


@pytest.mark.parametrize("recipe", ["nvidia-ptq-max", "zeroquant-w8a8"])
def test_a_sequence_gets_the_same_bytes_alone_in_any_batch_and_padded(tmp_path, recipe):
    rng = np.random.default_rng(3)
    for family, model, vocab in tiny_models(tmp_path / recipe):
        seqs = sequences(rng, vocab, [8, 3, 6, 1, 5])
        calib = [batch_of(seqs, family=family)]
        qm = rq.quantize_model(model, recipe, calib=calib, progress=False,
                               **({"num_groups": 1} if recipe.startswith("zeroquant") else {}))
        alone = [golden_tensors(model, {"q": qm}, batch_of([s], family=family), {"q": "numba"}) for s in seqs]
        layouts = {"batch": ([0, 1, 2, 3, 4], None), "longer padding": ([0, 1, 2, 3, 4], 11),
                   "other order": ([4, 2, 0, 3, 1], None), "subset": ([3, 1], 9)}
        for how, (order, width) in layouts.items():
            batch = batch_of([seqs[i] for i in order], width, family)
            tensors = golden_tensors(model, {"q": qm}, batch, {"q": "numba"})
            B, T = batch["input_ids"].shape
            for b, i in enumerate(order):
                n = len(seqs[i])
                for name, value in alone[i].items():
                    if name.startswith("inputs/"):
                        continue
                    assert_same_bits(real_rows(name, tensors[name], b, n, B, T), real_rows(name, value, 0, n, 1, n),
                                     f"{family} {recipe} {how}: sequence {i} {name}")


# -- (e) backends -----------------------------------------------------------------------------

def test_every_golden_tensor_is_the_same_on_the_numpy_numba_and_cuda_backends(tmp_path):
    pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(5)
    for family, model, vocab in tiny_models(tmp_path):
        batch = batch_of(sequences(rng, vocab, [7, 2, 5]), family=family)
        qm = rq.quantize_model(model, "nvidia-ptq-max", calib=[batch], progress=False)
        dumps = {backend: golden_tensors(model, {"q": qm}, batch, {"q": backend})
                 for backend in ("numpy", "numba", "cuda")}
        for backend in ("numba", "cuda"):
            assert dumps[backend].keys() == dumps["numpy"].keys()
            for name, value in dumps["numpy"].items():
                assert_same_bits(dumps[backend][name], value, f"{family} {backend} {name}")
