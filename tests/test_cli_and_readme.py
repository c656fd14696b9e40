"""The README's two set-up commands stay true, and the main-job CLI fails cleanly."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert len(cmds) == 2
    main_job, tests = cmds
    assert main_job.endswith("python -m refquant.validate") and "pip install -e ." in main_job
    test_cmd = tests.split("&& ")[-1].strip()
    assert test_cmd == "python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci and "pip install -q -e '.[test]'" in ci
    assert main_job.split("&& ")[-1].strip() in ci


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "refquant.compare_dialects", *args],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("make", ["missing", "pickle", "garbage"])
def test_cli_errors_are_one_line_on_stderr_with_exit_code_2(tmp_path, make):
    if make == "missing":
        path = tmp_path / "nope"
    elif make == "pickle":
        path = tmp_path / "pytorch_model.bin"
        path.write_bytes(b"\x80\x04K\x01.")
    else:
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    r = run_cli(str(path))
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert str(path.name) in lines[0]


def test_cli_runs_on_a_small_checkpoint(tmp_path):
    from weights_io import write_safetensors
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 24)) * 0.05).astype(np.float32)
    write_safetensors(tmp_path / "m.safetensors", {"layer.weight": w, "layer.bias": w[0].copy()})
    r = run_cli(str(tmp_path / "m.safetensors"), "--tensor", "layer.weight")
    assert r.returncode == 0, r.stderr
    assert "onnx vs torch" in r.stdout and "divide vs reciprocal" in r.stdout
    r = run_cli(str(tmp_path / "m.safetensors"), "--tensor", "layer.wieght")
    assert r.returncode == 2 and "layer.wieght" in r.stderr and "layer.weight" in r.stderr
