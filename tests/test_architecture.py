"""The layering the README promises, checked on the import statements themselves (``ast``).

* Service and domain code (everything in ``mes/`` except the web / CLI shell) imports no
  ``kiosk``, no ``mes.web``, no blueprint module, and never touches ``flask.request``: a
  rule enforced there holds for the kiosk, the API, the CLI and the simulator alike.
* ``devices/`` is a standalone driver library: it imports neither ``mes`` nor ``kiosk``.
* No source file in ``mes/`` or ``kiosk/`` is over 800 lines.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 800

# The web / CLI shell: modules whose job is to speak HTTP, Socket.IO or the command line.
SHELL_MODULES = {
    "mes/app.py",  # the application factory: registers every blueprint and the kiosk
    "mes/web.py",  # request handling shared by the blueprints (endpoint decorator, auth)
    "mes/wsgi.py",  # gunicorn's entry point
    "mes/server.py",  # `mes run`: gunicorn application
    "mes/cli.py",  # `mes`
    "mes/demo.py",  # `mes demo`
    "mes/observability.py",  # request ids, access log, /metrics counters (per request)
    "mes/realtime.py",  # Socket.IO namespace /live: connects sessions to rooms
}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def is_shell(path: Path) -> bool:
    name = rel(path)
    return (
        name in SHELL_MODULES
        or path.name == "blueprint.py"
        or (path.name == "cli.py" and path.parent.parent == ROOT / "mes")
    )


def domain_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "mes").rglob("*.py") if not is_shell(p))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import anywhere in the file, relative ones resolved;
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a module)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def forbidden_in_domain(module: str) -> str | None:
    """Why a domain module may not import ``module`` (None when it may)."""
    parts = module.split(".")
    if parts[0] == "kiosk":
        return "imports the kiosk"
    if parts[:2] == ["mes", "web"]:
        return "imports mes.web"
    if "blueprint" in parts:
        return "imports a blueprint module"
    if module == "flask.request":
        return "imports flask.request"
    return None


def request_uses(tree: ast.AST) -> Iterator[int]:
    """Lines that reach ``flask.request`` through the module (``import flask; flask.request``)."""
    flask_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "flask"
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "request"
            and isinstance(node.value, ast.Name)
            and node.value.id in flask_names
        ):
            yield node.lineno


def test_the_shell_is_what_the_readme_says() -> None:
    """The shell list names files that exist (a renamed module must be reclassified)."""
    for name in SHELL_MODULES:
        assert (ROOT / name).is_file(), name
    assert len(domain_modules()) > 50


def test_service_modules_import_no_web_layer() -> None:
    problems = []
    for path in domain_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        seen: set[int] = set()
        for line, module in imported_modules(path, tree):
            why = forbidden_in_domain(module)
            if why and line not in seen:  # `from a.blueprint import b`: one report, not two
                seen.add(line)
                problems.append(f"{rel(path)}:{line} {why} ({module})")
        problems += [f"{rel(path)}:{line} uses flask.request" for line in request_uses(tree)]
    assert not problems, "service/domain code must not depend on the web layer:\n" + "\n".join(sorted(problems))


def test_devices_import_neither_mes_nor_kiosk() -> None:
    problems = []
    for path in sorted((ROOT / "devices").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in imported_modules(path, tree):
            if module.split(".")[0] in {"mes", "kiosk"}:
                problems.append(f"{rel(path)}:{line} imports {module}")
    assert not problems, "devices/ is a standalone library:\n" + "\n".join(sorted(set(problems)))


def test_no_source_file_over_800_lines() -> None:
    too_long = []
    for package in ("mes", "kiosk"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                too_long.append(f"{rel(path)}: {lines} lines")
    assert not too_long, f"over {MAX_LINES} lines:\n" + "\n".join(too_long)


# ------------------------------------------------------------- the checker itself


def _violations(source: str, name: str = "mes/x/operations.py") -> list[str]:
    path = ROOT / name
    tree = ast.parse(source)
    found = [why for _, m in imported_modules(path, tree) if (why := forbidden_in_domain(m))]
    return found + ["request" for _ in request_uses(tree)]


def test_checker_finds_each_kind_of_violation() -> None:
    assert _violations("from mes.audit.blueprint import credentials_from")
    assert _violations("def f():\n    from mes.audit.blueprint import credentials_from")
    assert _violations("from ..audit import blueprint")
    assert _violations("from . import blueprint")
    assert _violations("from mes import web")
    assert _violations("import mes.web")
    assert _violations("import kiosk.views")
    assert _violations("from flask import request")
    assert _violations("import flask\nflask.request.args")
    assert _violations("import flask as f\nx = f.request")
    assert not _violations("from flask import current_app, has_app_context")
    assert not _violations("from mes.audit.log import record")
    assert not _violations("from mes.webhooks import x")


# ------------------------------------------- what a plain install brings


#: extras a plant may install beside the plain ``pip install open-mes``; ``dev`` is not one of them
PRODUCT_EXTRAS = ("postgres", "testkit")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_by(extras: tuple[str, ...]) -> set[str]:
    """The distributions ``pip install open-mes[extras]`` brings (normalized names), read from
    the installed metadata: the declared requirements and theirs, markers evaluated."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    found: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("open-mes", frozenset(("", *extras)))]
    while todo:
        name, wanted = todo.pop()
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in lines:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
                continue
            key = _normal(req.name)
            if key not in found:
                found.add(key)
                todo.append((req.name, frozenset(("", *req.extras))))
    return found


def third_party_imports() -> dict[str, list[str]]:
    """Top-level modules imported anywhere in ``mes/``, ``kiosk/`` and ``devices/`` that are
    neither the standard library nor the project itself, with where."""
    own = {"mes", "kiosk", "devices", "recipes", "tests"}
    out: dict[str, list[str]] = {}
    for package in ("mes", "kiosk", "devices"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else []
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        out.setdefault(top, []).append(f"{rel(path)}:{node.lineno}")
    return out


def test_every_library_the_product_imports_is_installed_by_the_plain_install() -> None:
    """The README's demo command installs ``open-mes`` without the ``dev`` extra: a library the
    code imports that only a test tool brings in works in the suite and fails on a plant's
    machine (the relay and the ERP/QMS simulators once imported ``requests``, which only
    schemathesis brought)."""
    from importlib.metadata import packages_distributions

    allowed = installed_by(PRODUCT_EXTRAS)
    dists = packages_distributions()
    missing = []
    for module, where in sorted(third_party_imports().items()):
        names = {_normal(d) for d in dists.get(module, [])}
        if not names & allowed:
            missing.append(f"{module} ({', '.join(sorted(names)) or 'not installed'}), imported at {where[0]}")
    assert not missing, "imported but not brought by `pip install open-mes`:\n" + "\n".join(missing)


def test_the_install_check_sees_a_test_tool_as_missing() -> None:
    allowed = installed_by(PRODUCT_EXTRAS)
    assert "flask" in allowed and "werkzeug" in allowed  # declared, and what it needs
    assert "psycopg" in allowed  # the postgres extra
    assert "schemathesis" not in allowed and "playwright" not in allowed  # dev only
