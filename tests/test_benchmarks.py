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
    "audit": ["--appends", "20", "--entries", "300", "--checkpoints", "1", "--witnessed", "5", "--signatures", "5"],
    "trace": ["--lots", "200", "--links", "2000"],
    "execution": ["--batches", "1,2", "--steps", "3", "--think-ms", "20"],
    "oee": ["--samples", "5", "--day-samples", "50", "--repeats", "1", "--lines", "2", "--days", "3"],
    "kiosk": ["--n", "3", "--pages", "3"],
    "integration": ["--events", "20", "--latency-events", "5", "--aggregates", "4"],
    "qa": ["--batches", "1", "--exceptions", "10", "--n", "3"],
    "ebr": ["--steps", "5", "--repeats", "1"],
    "plant": ["--operators", "2", "--seconds", "3", "--think-ms", "50", "--steps", "4", "--live-every-ms", "200"],
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
    if name == "plant":  # its kiosks reach /live over WebSocket through the shipped nginx site, as a kiosk does
        assert result["errors"] == 0, result["first_errors"]


def test_the_execution_benchmark_also_runs_without_the_proxy() -> None:
    """``--instances 0``: the kiosks talk to one ``mes run`` directly (the default run above
    is the deployed topology, two instances behind nginx)."""
    done = subprocess.run([sys.executable, "-m", "tests.bench.execution", "--db", "sqlite", *TINY["execution"],
                           "--instances", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert "no proxy" in result["server"] and "completions_per_instance" not in result


def test_the_benchmark_nginx_is_the_deployed_site(tmp_path: Path) -> None:
    """The bench's nginx.conf is deploy/nginx/mes.conf with only the listener, TLS, log paths
    and upstream servers changed: every proxy setting a kiosk's request meets is the deployed one."""
    from tests.bench.execution import NGINX_SITE, nginx_config

    conf = nginx_config(tmp_path, [18001, 18002], 19000)
    deployed = NGINX_SITE.read_text()
    for directive in ("proxy_set_header", "proxy_http_version", "proxy_next_upstream", "hash $remote_addr",
                      "keepalive ", "proxy_read_timeout", "location "):
        lines = {line.split("#")[0].strip() for line in deployed.splitlines() if line.strip().startswith(directive)}
        assert lines and all(line in conf for line in lines), directive
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    assert "listen 127.0.0.1:19000;" in code and "ssl_" not in code.replace("$ssl_protocol", "")
    assert "server 127.0.0.1:18001 " in conf and "server 127.0.0.1:18002 " in conf and ":8001" not in conf
    assert "/var/log" not in code and "return 301" not in code
