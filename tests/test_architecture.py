import subprocess
import sys

from conftest import REPO


def test_library_never_imports_ray():
    code = ("import sys, pkgutil, importlib, mvboost\n"
            "for m in pkgutil.walk_packages(mvboost.__path__, 'mvboost.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    src = [p for p in (REPO / "mvboost").rglob("*.py") if "import ray" in p.read_text()
           or "from ray" in p.read_text()]
    assert src == []
