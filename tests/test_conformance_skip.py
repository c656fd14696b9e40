"""A conformance check that ran nothing must not look like a pass (validation/conformance).

check_calib.py is run with ModelOpt made unimportable (a shim package ``modelopt`` that raises
ImportError, first on PYTHONPATH): it must print a SKIPPED line and exit 77 (SKIP_EXIT), or 1
with CI=true; run_all.py must list the stack as skipped and fail under CI. Report's exit rule
itself is checked in process.
"""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "validation" / "conformance"
sys.path.insert(0, str(CONFORMANCE))
import _common as C  # noqa: E402


@pytest.fixture(scope="module")
def no_modelopt(tmp_path_factory):
    shim = tmp_path_factory.mktemp("shim")
    (shim / "modelopt").mkdir()
    (shim / "modelopt" / "__init__.py").write_text(
        'raise ImportError("modelopt made unimportable by tests/test_conformance_skip.py")\n')
    return shim


def run_script(shim, ci, *args):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(ROOT)])
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_check_calib_without_modelopt_says_skipped_and_exits_77(no_modelopt):
    r = run_script(no_modelopt, False, CONFORMANCE / "check_calib.py")
    assert r.returncode == C.SKIP_EXIT == 77, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("[calib] SKIPPED: torch or nvidia-modelopt is not installed")
    assert "modelopt made unimportable" in lines[0]
    assert lines[-1] == "conformance: 0 passed, 0 failed, SKIPPED: nothing was checked"


def test_check_calib_without_modelopt_fails_under_ci(no_modelopt):
    r = run_script(no_modelopt, True, CONFORMANCE / "check_calib.py")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("[calib] SKIPPED: ")
    assert "CI is set: a skipped check fails the run" in r.stdout.strip().splitlines()[-1]


def test_run_all_reports_the_skipped_stack_and_fails_under_ci(no_modelopt):
    r = run_script(no_modelopt, True, CONFORMANCE / "run_all.py", "calib")
    assert r.returncode == 1, r.stdout + r.stderr
    summary = r.stdout.split("==================== summary ====================")[1]
    assert "calib                SKIPPED: torch or nvidia-modelopt is not installed" in summary
    assert r.stdout.strip().splitlines()[-1] == (
        "conformance: 0 passed, 0 failed, SKIPPED (in whole or part): calib "
        "(CI is set: a skipped check fails the run)")


def passing_report(stack="demo"):
    rep = C.Report(stack)
    chk = rep.check("a check")
    chk.cases = chk.exact = 3
    return rep


@pytest.mark.parametrize("ci, want", [(None, 0), ("true", 0), ("1", 0)])
def test_report_with_nothing_skipped_passes(monkeypatch, ci, want):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert passing_report().exit_code() == want


@pytest.mark.parametrize("ci, want", [(None, 77), ("", 77), ("false", 77), ("0", 77),
                                      ("true", 1), ("1", 1), ("yes", 1)])
def test_report_with_a_skipped_part_is_not_a_pass(monkeypatch, ci, want):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    rep = passing_report()
    rep.skip_missing("nlp-architect", ImportError("No module named 'nlp_architect'"),
                     "pip install --no-deps nlp-architect", part="Q8BERT EMA")
    assert rep.any_skipped and not rep.skipped and rep.exit_code() == want
    text = io.StringIO()
    rep.print(file=text)
    out = text.getvalue().splitlines()
    assert ("[demo] SKIPPED part Q8BERT EMA: nlp-architect is not installed (No module named "
            "'nlp_architect'); pip install --no-deps nlp-architect") in out
    assert out[-1].startswith("conformance: 3 passed, 0 failed, 1 part(s) SKIPPED")


def test_a_failure_outranks_a_skip(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    rep = passing_report()
    rep.checks[0].exact = 2
    rep.skip_missing("deepspeed", part="deepspeed")
    assert rep.exit_code() == 1


def test_whole_skip_returns_the_finished_report(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    rep = C.Report("onnx").skip_missing("onnx", ImportError("No module named 'onnx'"))
    assert rep.skipped == "onnx is not installed (No module named 'onnx')"
    assert rep.exit_code() == 77 and rep.passed == rep.failed == 0
