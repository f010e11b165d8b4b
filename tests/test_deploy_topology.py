"""The shipped deployment runs exactly the plant topology (issue 21): N web instances (the
nginx site's upstream servers), the device gateway, the outbox relay and the audit witness,
each as a service of its own, in the systemd units as in the compose file; every command a
unit or service starts is one ``mes --help`` lists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from mes.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "deploy" / "systemd"
COMPOSE = ROOT / "deploy" / "compose.yaml"
NGINX_SITE = ROOT / "deploy" / "nginx" / "mes.conf"
SERVICES = {"run", "gateway", "relay", "witness"}


def listed_commands() -> set[str]:
    """The commands ``mes --help`` lists."""
    out = CliRunner().invoke(cli, ["--help"])
    assert out.exit_code == 0, out.output
    section = out.output.split("Commands:", 1)[1]
    return {m.group(1) for m in re.finditer(r"^\s{2}([a-z][\w-]*)\s", section, re.M)}


def upstream_ports() -> list[int]:
    block = re.search(r"upstream mes_web \{(.*?)\}", NGINX_SITE.read_text(encoding="utf-8"), re.S)
    assert block, "deploy/nginx/mes.conf has no upstream mes_web"
    return [int(p) for p in re.findall(r"^\s*server\s+127\.0\.0\.1:(\d+)", block.group(1), re.M)]


def unit_commands() -> dict[str, list[str]]:
    """Each systemd service and the ``mes`` words its ExecStart runs."""
    out = {}
    for unit in sorted(SYSTEMD.glob("*.service")):
        line = next(ln for ln in unit.read_text(encoding="utf-8").splitlines() if ln.startswith("ExecStart="))
        words = re.search(r"/bin/mes\s+([^'\"]*)", line)
        assert words, f"{unit.name}: ExecStart does not run mes"
        out[unit.name] = words.group(1).split()
    return out


def test_every_unit_and_compose_service_runs_a_command_mes_help_lists() -> None:
    listed = listed_commands()
    assert SERVICES <= listed, listed
    for unit, words in unit_commands().items():
        assert words[0] in listed, f"{unit}: mes {words[0]} is not in `mes --help`"
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[:1] == ["mes"]:
            assert command[1] in listed, f"compose {name}: mes {command[1]} is not in `mes --help`"


def test_systemd_runs_each_part_as_a_service_of_its_own() -> None:
    by_command: dict[str, list[str]] = {}
    for unit, words in unit_commands().items():
        by_command.setdefault(words[0], []).append(unit)
    for command in SERVICES:
        assert len(by_command.get(command, [])) == 1, f"one unit runs mes {command}: {by_command.get(command)}"
    assert by_command["run"] == ["mes-web@.service"]  # one template, one instance per upstream port
    web = (SYSTEMD / "mes-web@.service").read_text(encoding="utf-8")
    enabled = [int(p) for p in re.findall(r"mes-web@(\d+)", web)]
    assert sorted(set(enabled)) == sorted(upstream_ports()), "the instances the unit enables are nginx's upstream"
    assert "--bind 127.0.0.1:%i --workers 1" in web


def test_compose_runs_exactly_the_upstream_instances_gateway_relay_and_witness() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    commands = {name: s["command"][1] for name, s in services.items()
                if isinstance(s.get("command"), list) and s["command"][:1] == ["mes"]}
    web = [name for name, c in commands.items() if c == "run"]
    published = sorted(int(port.split(":")[1]) for name in web for port in services[name]["ports"])
    assert published == sorted(upstream_ports()) and len(web) == len(upstream_ports())
    for name in web:
        assert services[name]["environment"]["MES_WORKERS"] == "1"
        assert services[name]["environment"]["MES_REDIS_URL"].startswith("redis://")
    for command in ("gateway", "relay", "witness"):
        assert list(commands.values()).count(command) == 1, f"one compose service runs mes {command}"
