"""The linter runs with the suite: `ruff check` (configured in pyproject.toml) finds nothing.

Ruff comes with the `test` extra, which the README's test command and `.ci/run` install; the test
fails, rather than skips, when it is missing, so a CI run without the linter cannot pass.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "No module named ruff" not in proc.stderr, 'ruff is missing: pip install -e ".[test]"'
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
