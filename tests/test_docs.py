"""The README and the deploy files describe exactly what runs.

Every ``mes`` command (and its flags) they name exists in the click CLI, every ``MES_*``
variable they name is read by the code, the README's configuration table is
:data:`mes.config.SETTINGS` (plus ``MES_HOME``) row for row, every repository path they
name exists, and every URL the README names is routed by the app. A doc that promises what
does not exist fails here instead of on an operator's console.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from mes.cli import main as cli
from mes.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPERATIONS = ROOT / "deploy" / "OPERATIONS.md"
SYSTEMD = sorted((ROOT / "deploy" / "systemd").iterdir())
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
KIOSK_FILES = sorted((ROOT / "deploy" / "kiosk").iterdir())
COMPOSE_ENV = ROOT / "deploy" / "compose.env.example"

MARKDOWN = (README, OPERATIONS)
PLAIN = (*SYSTEMD, COMPOSE, COMPOSE_ENV, DOCKERFILE, GUNICORN_CONF, *KIOSK_FILES)

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


def code_of(path: Path) -> str:
    """What a file shows as code: fenced blocks and inline spans of Markdown, all of the rest."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".md":
        return text
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    return "\n".join([*blocks, *INLINE.findall(prose)])


# ------------------------------------------------------------------ mes commands

# `mes` (or `mes-admin`, which runs `mes` as the services do) in command position.
INVOCATION = re.compile(
    r"(?:^|\bsudo\s+|/bin/|&&\s*|\bmigrate\s+|\bexec\s+|`)\s*(mes|mes-admin)[ \t]+([a-z][\w-]*)([^\n`]*)",
    re.M,
)


def invocations() -> Iterator[tuple[str, list[str]]]:
    """(file, words after ``mes``) for every ``mes`` command the docs and deploy files show."""
    for path in (*MARKDOWN, *PLAIN):
        for match in INVOCATION.finditer(code_of(path)):
            yield path.name, [match.group(2), *match.group(3).split()]
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for service in compose["services"].values():
        command = service.get("command")
        if isinstance(command, list) and command[:1] == ["mes"]:
            yield COMPOSE.name, command[1:]


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command the words name (descending into groups) and the words left over."""
    command: click.Command = cli
    names = list(words)
    while isinstance(command, click.Group) and names and re.fullmatch(r"[a-z][\w-]*", names[0]):
        name = names.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"`mes {' '.join(words)}`: {command.name} has no command {name!r}"
        command = sub
    return command, names


def test_every_mes_command_in_docs_exists() -> None:
    found = list(invocations())
    assert len(found) >= 20, found  # the pattern still finds the documented commands
    for where, words in found:
        command, rest = resolve(words)
        if command.context_settings.get("ignore_unknown_options"):
            continue  # `mes sim scale|modbus|opcua` pass their options on to the simulator
        flags = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts} | {"--help"}
        for word in rest:
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", word):
                assert flag in flags, f"{where}: `mes {' '.join(words)}`: {command.name} has no option {flag}"


def test_every_deploy_unit_runs_an_existing_command() -> None:
    """Each systemd service starts a ``mes`` command that exists (no unit for a missing one)."""
    for unit in (p for p in SYSTEMD if p.suffix == ".service"):
        exec_start = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
        assert exec_start, unit.name
        words = re.search(r"/bin/mes\s+(.*?)(?:\s+--|['\"]|$)", exec_start[0])
        assert words, f"{unit.name}: ExecStart does not run mes"
        resolve(words.group(1).split())


# ------------------------------------------------------------------- variables

def _config_table() -> dict[str, tuple[str, str]]:
    """The README's configuration table: variable -> (default, meaning)."""
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`MES_[A-Z0-9_]+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_readme_configuration_table_is_mes_config() -> None:
    table = _config_table()
    settings = {s.env: s for s in SETTINGS}
    assert set(table) == set(settings) | {"MES_HOME"}
    for env, setting in settings.items():
        default, meaning = table[env]
        expected = "—" if setting.default is None else setting.default
        assert default == expected, f"{env}: README default {default!r}, mes/config.py {expected!r}"
        assert meaning == setting.help, f"{env}: README says {meaning!r}, mes/config.py {setting.help!r}"
    assert table["MES_HOME"][0] == "./instance"


def _python_string_constants(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(re.findall(r"\bMES_[A-Z0-9_]*[A-Z0-9]\b", node.value))
    return names


def variables_read_by_code() -> set[str]:
    """Every ``MES_*`` name the code reads: the Python packages and tests, gunicorn.conf.py,
    the shell launchers, and the variables docker compose substitutes itself."""
    python = [p for d in ("mes", "kiosk", "devices", "tests") for p in (ROOT / d).rglob("*.py")
              if p.resolve() != Path(__file__).resolve()]
    names = _python_string_constants([*python, GUNICORN_CONF])
    names |= {s.env for s in SETTINGS} | {"MES_HOME"}
    for script in (ROOT / "deploy" / "kiosk" / "mes-kiosk.sh", ROOT / "deploy" / "systemd" / "mes-admin"):
        names |= set(re.findall(r"\$\{?(MES_[A-Z0-9_]*[A-Z0-9])\b", script.read_text(encoding="utf-8")))
    names |= set(re.findall(r"\$\{(MES_[A-Z0-9_]*[A-Z0-9])", COMPOSE.read_text(encoding="utf-8")))
    return names


def test_every_documented_variable_is_read_by_the_code() -> None:
    known = variables_read_by_code()
    for path in (*MARKDOWN, *PLAIN):
        for name in set(re.findall(r"\bMES_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))):
            assert name in known, f"{path.relative_to(ROOT)} names {name}, which no code reads"


def test_every_mes_config_variable_is_documented() -> None:
    documented = set(re.findall(r"\bMES_[A-Z0-9_]*[A-Z0-9]\b", README.read_text(encoding="utf-8")))
    assert {s.env for s in SETTINGS} | {"MES_HOME"} <= documented


# ----------------------------------------------------------------------- paths

TOP = {p.name for p in ROOT.iterdir()} - {".git", ".venv"}
GENERATED = {"artifacts/kiosk/"}  # written by the browser tests, not in the repository


def repo_paths(path: Path) -> Iterator[str]:
    """Repository paths a doc names: link targets, code spans that are paths, and path words
    inside commands that start at a top-level entry (``deploy/…``, ``.ci/lock`` …)."""
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if "://" not in target:
            yield target
    for span in INLINE.findall(FENCE.sub("", text)) + FENCE.findall(text):
        for word in span.split():
            word = word.strip("'\"(),;:[]")
            word = re.sub(r"^/opt/mes/src/", "", word)
            if "<" in word or "$" in word or "{" in word:
                continue
            if word.split("/", 1)[0] in TOP and ("/" in word or "." in word):
                yield word


def test_every_path_in_readme_exists() -> None:
    named = set(repo_paths(README))
    assert {"deploy/gunicorn.conf.py", "constraints.txt", "deploy/OPERATIONS.md"} <= named
    for name in named - GENERATED:
        matches = list(ROOT.glob(name.rstrip("/"))) if "*" in name else [ROOT / name]
        assert matches and all(m.exists() for m in matches), f"README names {name}, which does not exist"


def test_every_repository_path_in_operations_exists() -> None:
    for name in set(repo_paths(OPERATIONS)):
        matches = list(ROOT.glob(name)) if "*" in name else [ROOT / name]
        assert matches and all(m.exists() for m in matches), f"OPERATIONS.md names {name}, which does not exist"


def test_readme_modules_exist() -> None:
    """``python -m tests.bench.<name>`` and friends name modules that exist."""
    modules = re.findall(r"python -m ([\w.]+)", README.read_text(encoding="utf-8"))
    assert modules
    for module in modules:
        if module == "pytest" or module.endswith("."):  # `tests.bench.<name>`
            continue
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


# ------------------------------------------------------------------------ URLs

URL = re.compile(r"(?:(GET|POST) )?(/(?:api/v1|kiosk|qa|healthz|readyz|metrics|terminal)\b[^\s`?]*)(?:\?\S*)?$")


@pytest.fixture(scope="module")
def url_map(tmp_path_factory: pytest.TempPathFactory):
    from mes.app import create_app

    home = tmp_path_factory.mktemp("docs-home")
    app = create_app({"MES_HOME": str(home), "SQLALCHEMY_DATABASE_URI": f"sqlite:///{home / 'mes.sqlite3'}",
                      "SECRET_KEY": "docs-test", "MES_SIMULATION": True})
    return app.url_map.bind("mes.test")


def documented_urls() -> Iterator[tuple[str, str, str]]:
    """(file, method, concrete path) for every MES URL the README and OPERATIONS name;
    ``<placeholder>`` becomes a sample segment and ``a|b`` in the last segment both."""
    for doc in MARKDOWN:
        for span in INLINE.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
            found = URL.match(span)
            if found:
                method, url = found.groups()
                url = re.sub(r"<[^>]+>", "SAMPLE", url)
                head, _, last = url.rpartition("/")
                for choice in last.split("|"):
                    yield doc.name, method or "GET", f"{head}/{choice}"


def test_every_documented_url_is_routed(url_map) -> None:
    urls = list(documented_urls())
    assert len(urls) >= 8, urls
    for where, method, url in urls:
        url_map.match(url, method=method)  # NotFound / MethodNotAllowed name the URL
        assert where
