"""The suite's own set-up: `-n 2` keeps an xdist group on one worker (the pool server starts once); the suite also
starts without xdist (`-p no:xdist`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import pytest

@pytest.mark.xdist_group("pool")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    pass

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    pass
'''


def _pytest(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest in a subprocess on a probe directory under tests/e2e (so both conftests apply)."""
    here = ROOT / "tests" / "e2e" / f"zz_probe_{os.getpid()}_{tmp.name}"
    here.mkdir()
    try:
        (here / "test_probe.py").write_text(PROBE)
        return subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                               *args, str(here)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        for f in here.iterdir():
            f.unlink()
        here.rmdir()


def test_two_workers_keep_a_group_on_one_worker(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "-n", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {m.group(1) for m in re.finditer(r"\[(gw\d)\].*PASSED .*test_grouped", done.stdout)}
    assert len(re.findall(r"PASSED .*test_grouped\[\d\]@pool", done.stdout)) == 6, done.stdout
    assert len(workers) == 1, done.stdout


def test_the_suite_starts_without_xdist(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "-p", "no:xdist")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 passed" in done.stdout, done.stdout
