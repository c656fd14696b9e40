"""python -m refquant.vectors: deterministic files whose manifest is enough to recompute every
expected output (a stack in another language has only these files)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import refquant as rq
import weights_io
from refquant.kernels import reference as ref
from refquant.testing import assert_bitexact

ROOT = Path(__file__).resolve().parents[1]


def test_suite_is_deterministic_and_self_consistent(tmp_path):
    for d in ("a", "b"):
        r = subprocess.run([sys.executable, "-m", "refquant.vectors", str(tmp_path / d)],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    kinds = {c["kind"] for c in manifest["cases"]}
    assert kinds == {"quantize", "quantize_given", "gemm", "int4", "calib"}
    for case in manifest["cases"]:
        t = weights_io.SafetensorsFile(tmp_path / "a" / case["file"])
        assert set(case["inputs"]) | set(case["outputs"]) <= set(t.keys()), case["name"]
        if case["kind"].startswith("quantize"):
            spec = rq.QuantSpec(**case["spec"])  # the manifest describes the spec completely
            x = t.get_raw("x")
            extra = {"multiplier": t.get_raw("multiplier")} if "multiplier" in t else {}
            qp = rq.QParams(t.get_raw("scale"), t.get_raw("zero_point"), spec, **extra)
            if case["kind"] == "quantize":
                chosen = rq.choose_qparams(x, spec)
                assert_bitexact(chosen.scale, qp.scale, case["name"] + " scale")
            q = rq.quantize(x, qp)
            assert_bitexact(q, t.get_raw("q"), case["name"])
            assert_bitexact(rq.dequantize(q, qp), t.get_raw("dequantized"), case["name"])
            assert_bitexact(rq.fake_quant(x, qp), t.get_raw("fake_quant"), case["name"])
        elif case["kind"] == "gemm":
            a, w = t.get_raw("a"), t.get_raw("w")
            assert np.array_equal(t.get_raw("acc"), a.astype(np.int64) @ w.astype(np.int64).T)
            assert_bitexact(ref.linear_i8(a, t.get_raw("s_a"), w, t.get_raw("s_w"), t.get_raw("bias")), t.get_raw("y"))
        elif case["kind"] == "int4":
            v = t.get_raw("values")
            assert np.array_equal(ref.unpack_w4(t.get_raw("refquant_pack_w4"), v.shape[1]), v)
            assert np.array_equal(weights_io.unpack_int4_onnx(t.get_raw("onnx"), v.size).reshape(v.shape), v)
    given = [c for c in manifest["cases"] if c["kind"] == "quantize_given"]
    assert len(given) >= 40  # every dialect x granularity x {int8, int4} it defines


def test_unwritable_outdir_is_one_line_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    r = subprocess.run([sys.executable, "-m", "refquant.vectors", str(tmp_path / "file")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a directory" in r.stderr
