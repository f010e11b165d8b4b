"""``mes recipes validate FILE`` and ``mes recipes import FILE --as USER``.

Registered by :func:`register_cli` from ``mes/cli.py``. ``validate`` reads no database and
prints one ``file:line:col: path: message`` line per problem (exit 1 if any).
"""

from __future__ import annotations

import sys

import click


def register_cli(main: click.Group) -> None:
    """Add the ``mes recipes`` group to the ``mes`` command group."""
    from mes.cli import _as_user, handle_errors, make_app, reachable

    @main.group("recipes")
    def recipes() -> None:
        """Master recipes: validate files and import them as draft versions."""

    @recipes.command("validate")
    @click.argument("file", type=click.Path(dir_okay=False))
    def validate(file: str) -> None:
        """Check a master recipe file; line-numbered problems, non-zero exit if any."""
        from mes.recipes.loader import validate_file

        problems = validate_file(file)
        for line in problems:
            click.echo(line, err=True)
        if problems:
            click.echo(f"{len(problems)} problem(s) in {file}", err=True)
            sys.exit(1)
        click.echo(f"ok   {file}")

    @recipes.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.option("--as", "as_user", required=True, help="recipe author (supervisor) importing the file")
    @handle_errors
    def import_(file: str, as_user: str) -> None:
        """Import a master recipe file as a new draft version."""
        from mes.execution import recipes_store
        from mes.recipes.loader import validate_file

        problems = validate_file(file)
        if problems:
            for line in problems:
                click.echo(line, err=True)
            sys.exit(1)
        app = make_app()
        reachable(app)
        with app.app_context():
            actor = _as_user(app, as_user, "recipe.author")
            rv = recipes_store.import_file(actor, file)
            click.echo(f"imported {rv.id} as {rv.status} (sha256 {rv.hash})")
