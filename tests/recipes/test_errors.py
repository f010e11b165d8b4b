"""Problems and RecipeError: message format, ordering, integration with MES errors."""

from __future__ import annotations

from mes.errors import MESError, ValidationFailed
from mes.recipes.errors import Problem, RecipeError, format_path


def test_format_path() -> None:
    assert format_path(("procedure", 0, "operations", 1, "steps", 2, "target")) == "procedure[0].operations[1].steps[2].target"
    assert format_path(("batch_size", "unit")) == "batch_size.unit"
    assert format_path(()) == ""


def test_problem_text() -> None:
    p = Problem("'12.5kg' is not a decimal quantity", "procedure[0].operations[1].steps[2].target", 42, 7, "recipes/x.yaml")
    assert str(p) == "recipes/x.yaml:42:7: procedure[0].operations[1].steps[2].target: '12.5kg' is not a decimal quantity"
    assert str(Problem("empty", "", None, None, None)) == "<recipe>: (root): empty"
    assert str(Problem("bad", "id", source="db:recipe/1")) == "db:recipe/1: id: bad"


def test_recipe_error_sorts_and_deduplicates() -> None:
    later = Problem("b", "x", 10, 1, "f.yaml")
    earlier = Problem("a", "y", 2, 5, "f.yaml")
    err = RecipeError([later, earlier, later])
    assert err.problems == [earlier, later]
    assert err.messages() == ["f.yaml:2:5: y: a", "f.yaml:10:1: x: b"]
    assert str(err) == "f.yaml:2:5: y: a\nf.yaml:10:1: x: b"
    assert err.detail == "f.yaml:2:5: y: a (and 1 more problem)"


def test_recipe_error_is_a_validation_failure() -> None:
    err = RecipeError([Problem("bad", "id")])
    assert isinstance(err, ValidationFailed) and isinstance(err, MESError) and isinstance(err, Exception)
    assert err.status == 422 and err.slug == "recipe-invalid"
    assert err.extra == {"problems": ["<recipe>: id: bad"]}
    assert RecipeError([]).problems  # never empty
