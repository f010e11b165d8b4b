"""``mes run``: where its gunicorn settings come from, and a bad setting stopping it in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mes import server
from mes.cli import main
from mes.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SERVER_VARS = ("MES_BIND", "MES_WORKERS", "MES_THREADS", "MES_WORKER_TIMEOUT", "MES_GRACEFUL_TIMEOUT",
               "MES_KEEPALIVE", "MES_MAX_REQUESTS", "MES_FORWARDED_ALLOW_IPS", "MES_GUNICORN_CONFIG",
               "MES_ACCESS_LOG", "MES_LOG_LEVEL", "MES_CONTROL_SOCKET")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVER_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], str | None]]:
    """What serve() would hand to gunicorn, instead of running it."""
    calls: list[tuple[dict[str, Any], str | None]] = []

    class Recorder:
        def __init__(self, options: dict[str, Any], config_file: str | None) -> None:
            calls.append((options, config_file))

        def run(self) -> None:
            pass

    monkeypatch.setattr(server, "MESServer", Recorder)
    return calls


def test_defaults_match_the_deployed_config() -> None:
    options = server.options_from_env()
    assert options["bind"] == ["127.0.0.1:8000"] and options["workers"] == 1 and options["threads"] == 50
    assert options["keepalive"] == 75 and options["graceful_timeout"] == 30 and options["timeout"] == 60
    assert options["control_socket_disable"] is True and "control_socket" not in options
    assert options["secure_scheme_headers"] == {"X-FORWARDED-PROTO": "https"}
    assert options["accesslog"] is None and options["max_requests"] == 0


def test_environment_sets_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MES_BIND", "127.0.0.1:8001, unix:/run/mes/web.sock")
    monkeypatch.setenv("MES_THREADS", "64")
    monkeypatch.setenv("MES_KEEPALIVE", "90")
    monkeypatch.setenv("MES_WORKERS", "auto")
    options = server.options_from_env()
    assert options["bind"] == ["127.0.0.1:8001", "unix:/run/mes/web.sock"]
    assert options["threads"] == 64 and options["keepalive"] == 90 and 1 <= options["workers"] <= 8


def test_control_socket_access_log_and_recycling_are_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MES_CONTROL_SOCKET", "/run/mes-web-8001/gunicorn.ctl")
    monkeypatch.setenv("MES_ACCESS_LOG", "1")
    monkeypatch.setenv("MES_MAX_REQUESTS", "5000")
    options = server.options_from_env()
    assert options["control_socket"] == "/run/mes-web-8001/gunicorn.ctl" and options["control_socket_mode"] == 0o600
    assert "control_socket_disable" not in options
    assert options["accesslog"] == "-" and options["max_requests_jitter"] == 500


@pytest.mark.parametrize(("name", "value"), [("MES_THREADS", "lots"), ("MES_THREADS", "0"), ("MES_KEEPALIVE", "7.5"),
                                             ("MES_WORKERS", "-1"), ("MES_GRACEFUL_TIMEOUT", "0"), ("MES_BIND", " , "),
                                             ("MES_ACCESS_LOG", "sometimes")])
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        server.options_from_env()


def test_mes_run_stops_on_a_bad_value_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                   started: list[Any]) -> None:
    monkeypatch.setenv("MES_THREADS", "lots")
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2 and not started
    assert result.output.strip().splitlines() == ["error: MES_THREADS='lots': expected a whole number from 1 to 1000"]
    bad_option = CliRunner().invoke(main, ["run", "--workers", "0"])
    assert bad_option.exit_code == 2 and "--workers" in bad_option.output and not started


def test_the_config_file_is_chosen_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert server.config_file_for(None) is None
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "gunicorn.conf.py").write_text("threads = 3\n")
    assert server.config_file_for(None) == str(Path("deploy") / "gunicorn.conf.py")
    other = tmp_path / "other.conf.py"
    other.write_text("threads = 4\n")
    monkeypatch.setenv("MES_GUNICORN_CONFIG", str(other))
    assert server.config_file_for(None) == str(other)
    assert server.config_file_for("deploy/gunicorn.conf.py") == "deploy/gunicorn.conf.py"
    with pytest.raises(ConfigError, match="missing.conf.py"):
        server.config_file_for(str(tmp_path / "missing.conf.py"))


def test_without_a_file_the_environment_decides_and_options_override(started: list[Any]) -> None:
    server.serve(bind="127.0.0.1:9000", threads=8)
    (options, config_file), = started
    assert config_file is None
    assert options["bind"] == "127.0.0.1:9000" and options["threads"] == 8 and options["workers"] == 1
    assert options["keepalive"] == 75


def test_with_a_file_only_given_options_override_it(started: list[Any]) -> None:
    server.serve(workers=2, config_file="deploy/gunicorn.conf.py")
    (options, config_file), = started
    assert config_file == "deploy/gunicorn.conf.py"
    assert options == {"worker_class": "gthread", "workers": 2}


def test_gunicorn_reads_the_deployed_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/gunicorn.conf.py as gunicorn loads it, with the options mes run passes on top."""
    monkeypatch.setenv("MES_THREADS", "40")
    monkeypatch.setenv("MES_BIND", "127.0.0.1:8123")
    app = server.MESServer({"worker_class": "gthread", "workers": 1}, str(ROOT / "deploy" / "gunicorn.conf.py"))
    cfg = app.cfg
    assert cfg.threads == 40 and cfg.workers == 1 and cfg.keepalive == 75 and cfg.worker_class_str == "gthread"
    assert cfg.bind == ["127.0.0.1:8123"] and cfg.graceful_timeout == 30
    assert cfg.secure_scheme_headers == {"X-FORWARDED-PROTO": "https"}
    assert cfg.logger_class.__name__ == "JsonLogger" and cfg.control_socket_disable is True


def test_the_deployed_config_file_stops_on_a_bad_value(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Started by gunicorn itself (not through mes run), the file applies the same checks."""
    monkeypatch.setenv("MES_KEEPALIVE", "forever")
    with pytest.raises(SystemExit):
        server.MESServer({}, str(ROOT / "deploy" / "gunicorn.conf.py"))
    assert "MES_KEEPALIVE='forever'" in capsys.readouterr().err
