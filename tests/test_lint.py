"""Undefined names and unused imports are bugs that only show on the rare path
(an `except` clause naming a class that was never imported): catch them all here, and
check the type hints of the product code (bots, handlers, state) with mypy."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_undefined_names_or_unused_imports() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pip install -e '.[test]')"
    proc = subprocess.run([ruff, "check", "--select", "F,E9", "bots", "handlers", "state", "tests", "bench"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_type_hints_hold() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    assert mypy, "mypy is a test dependency (pip install -e '.[test]')"
    proc = subprocess.run([mypy, "bots", "handlers", "state"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
