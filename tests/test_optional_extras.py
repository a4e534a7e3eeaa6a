"""Every test module imports without the optional extras: a test that needs one skips with a reason.

The README's test command and CI run one suite; a user who installed neither the Ray extra nor
matplotlib must still collect every module, so an extra may be imported only behind a skip guard
(``pytest.importorskip`` or a fixture that skips). This runs pytest's collection in a child process
whose import system reports the extras as absent, as ``importlib.util.find_spec`` would on such
a machine, and fails on any collection error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

OPTIONAL_EXTRAS = ("ray", "matplotlib")
TESTS = Path(__file__).resolve().parent

# Runs in the child: the path finder answers "not installed" for the extras, so ``import ray`` raises
# ModuleNotFoundError and ``find_spec("ray")`` is None, exactly as without the package.
_COLLECT_WITHOUT = """
import importlib.machinery, sys
blocked = set(sys.argv[1].split(","))
class Absent:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    @staticmethod
    def invalidate_caches():
        importlib.machinery.PathFinder.invalidate_caches()
    @staticmethod
    def find_distributions(*args, **kwargs):
        found = importlib.machinery.PathFinder.find_distributions(*args, **kwargs)
        return (d for d in found if (d.metadata["Name"] or "").lower() not in blocked)
sys.meta_path[:] = [Absent if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[2]]))
"""


def test_every_test_module_collects_without_the_optional_extras() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _COLLECT_WITHOUT, ",".join(OPTIONAL_EXTRAS), str(TESTS)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=TESTS.parent,
    )
    assert result.returncode == 0, f"collection failed without {OPTIONAL_EXTRAS}:\n{result.stdout[-4000:]}"
    assert "error" not in result.stdout.splitlines()[-1].lower(), result.stdout[-2000:]
