"""Master recipe versions in the database: import, lifecycle, QA approval, supersession, diff, CLI."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from flask import Flask

from mes.errors import Conflict
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.recipes.errors import RecipeError
from mes.signatures import operations as esig
from tests.execution_helpers import PCM, make_world
from tests.helpers import logged_in


def test_lifecycle_approval_supersession_and_diff(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    author = world.actor("supervisor")
    v1 = store.import_file(author, PCM)
    assert v1.status == "draft" and v1.id == "MR-PCM500-TAB@1" and len(v1.hash) == 64
    assert v1.source_text == PCM.read_text()
    # a draft cannot be used or approved
    with pytest.raises(Conflict, match="only approved or effective"):
        ex.create_work_order(author, "FG-PCM500-TAB", "200000", "pcs", v1.id)
    with pytest.raises(Conflict, match="cannot become approved"):
        store.approve(world.sessions["qa"], world.creds("qa"), v1.id, terminal="QA-WS-01")
    store.submit_for_review(author, v1.id)
    store.approve(world.sessions["qa"], world.creds("qa"), v1.id, terminal="QA-WS-01")
    assert store.get_version(v1.id).status == "approved"
    sigs = esig.signatures_for("recipe_version", v1.id)
    assert [(s.signer, s.meaning, s.valid) for s in sigs] == [("qa1", "approved", True)]
    store.make_effective(author, v1.id)
    # the same version cannot be imported twice
    with pytest.raises(Conflict, match="exists already"):
        store.import_file(author, PCM)
    v2_text = PCM.read_text().replace("version: 1", "version: 2", 1).replace('quantity: "100.000"', 'quantity: "100.500"', 1)
    v2 = store.import_recipe(author, v2_text, "pcm-v2.yaml")
    changes = store.diff_versions(v1.id, v2.id)
    assert any("version" in c for c in changes) and any("RM-1001" in c for c in changes)
    store.submit_for_review(author, v2.id)
    store.approve(world.sessions["qa"], world.creds("qa"), v2.id, terminal="QA-WS-01")
    store.make_effective(author, v2.id)
    assert store.get_version(v1.id).status == "superseded" and store.get_version(v2.id).status == "effective"
    store.retire(author, v2.id, "product discontinued")
    with pytest.raises(Conflict):
        store.usable_version(v2.id)


def test_invalid_recipe_is_refused_with_line_numbers(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    bad = PCM.read_text().replace('quantity: "100.000"', 'quantity: "100,000"', 1)
    with pytest.raises(RecipeError) as err:
        store.import_recipe(world.actor("supervisor"), bad, "bad.yaml")
    assert err.value.messages()[0].startswith("bad.yaml:")


def test_cli_validate(tmp_path) -> None:
    from mes.execution.cli import register_cli

    @click.group()
    def main() -> None:
        pass

    register_cli(main)
    runner = CliRunner()
    ok = runner.invoke(main, ["recipes", "validate", str(PCM)])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(PCM.read_text().replace("kind: weigh", "kind: wiegh", 1))
    result = runner.invoke(main, ["recipes", "validate", str(bad)])
    assert result.exit_code == 1 and f"{bad}:" in result.output


def test_api_recipe_import_and_list(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    sup = logged_in(client, world.seeded, "supervisor")
    r = sup.post("/api/v1/recipes", {"yaml": PCM.read_text(), "name": PCM.name})
    assert r.status_code == 201, r.get_json()
    vid = r.get_json()["id"]
    assert sup.post(f"/api/v1/recipes/{vid}/submit").status_code == 200
    listed = sup.get("/api/v1/recipes").get_json()["recipes"]
    assert [x["status"] for x in listed] == ["in_review"]
    bad = sup.post("/api/v1/recipes", {"yaml": "format: nope\n"})
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
