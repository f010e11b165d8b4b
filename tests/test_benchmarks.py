"""Each benchmark runs once at a tiny size so it cannot rot (figures are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "requests": ["--n", "5"],
    "audit": ["--appends", "20", "--entries", "300"],
    "trace": ["--lots", "200", "--links", "2000"],
    "execution": ["--batches", "1,2", "--steps", "3", "--think-ms", "20"],
    "oee": ["--samples", "5", "--day-samples", "50", "--repeats", "1"],
    "kiosk": ["--n", "3", "--pages", "3"],
}
DB_FREE = {"devices": ["--seconds", "0.5", "--tags", "10", "--cycles", "3"]}


@pytest.mark.parametrize("name", sorted(DB_FREE))
def test_device_benchmark_runs(name: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"tests.bench.{name}", *DB_FREE[name]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and json.loads(lines[0])["benchmark"] == name


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_benchmark_runs_and_prints_one_json_object(name: str, db: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"tests.bench.{name}", "--db", db, *TINY[name]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert result["benchmark"] == name and result["db"] == db
