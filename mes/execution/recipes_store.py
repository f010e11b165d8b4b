"""Master recipe versions in the database: import (validated by :mod:`mes.recipes`),
review, QA approval with an e-signature, effectivity, supersession and retirement.

Lifecycle: ``draft`` → ``in_review`` → ``approved`` (QA signs, meaning ``approved``) →
``effective`` → ``superseded`` (a newer version became effective) or ``retired``. Only
``approved`` and ``effective`` versions can be used for work orders. A version's source
text, normalised dict and hash never change after import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mes.audit.log import Actor, record
from mes.db import db, utcnow
from mes.errors import Conflict, ValidationFailed
from mes.execution.models import RecipeStatus, RecipeVersion
from mes.recipes.diff import diff
from mes.recipes.loader import from_dict, load_recipe
from mes.recipes.model import MasterRecipe
from mes.recipes.scaling import recipe_hash
from mes.signatures import operations as esig
from mes.users.models import UserSession
from mes.users.operations import actor_for
from mes.users.permissions import Permission
from mes.validation import get_or_404

USABLE = (RecipeStatus.APPROVED.value, RecipeStatus.EFFECTIVE.value)
_MASTERS: dict[str, MasterRecipe] = {}


@esig.record_provider("recipe_version")
def recipe_version_record(version_id: str) -> dict[str, Any]:
    """What QA signs: the version's identity and the hash of its normalised content."""
    rv = get_version(version_id)
    return {"id": rv.id, "recipe": rv.recipe_id, "version": rv.version, "product": rv.product_code, "hash": rv.hash}


def get_version(version_id: str) -> RecipeVersion:
    return get_or_404(RecipeVersion, version_id, "Recipe version")


def list_versions(recipe_id: str | None = None, status: str | None = None) -> list[RecipeVersion]:
    stmt = select(RecipeVersion).order_by(RecipeVersion.recipe_id, RecipeVersion.created_at)
    if recipe_id:
        stmt = stmt.where(RecipeVersion.recipe_id == recipe_id)
    if status:
        stmt = stmt.where(RecipeVersion.status == status)
    return list(db.session.execute(stmt).scalars())


def master_of(rv: RecipeVersion) -> MasterRecipe:
    """The validated master recipe of a stored version (cached by hash)."""
    cached = _MASTERS.get(rv.hash)
    if cached is None:
        cached = from_dict(rv.data, source=rv.id)
        _MASTERS[rv.hash] = cached
    return cached


def version_json(rv: RecipeVersion, *, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rv.id, "recipe_id": rv.recipe_id, "version": rv.version, "product": rv.product_code,
        "status": rv.status, "hash": rv.hash, "source_name": rv.source_name,
        "created_at": rv.created_at.isoformat(), "created_by": rv.created_by,
        "approved_at": rv.approved_at.isoformat() if rv.approved_at else None, "approved_by": rv.approved_by,
        "effective_at": rv.effective_at.isoformat() if rv.effective_at else None,
    }
    if detail:
        out["recipe"] = rv.data
        out["signatures"] = [s.__dict__ for s in esig.signatures_for("recipe_version", rv.id)]
    return out


def import_recipe(actor: Actor, text: str, source_name: str = "<upload>") -> RecipeVersion:
    """Validate YAML text as a master recipe and store it as a new ``draft`` version."""
    recipe = load_recipe(text, name=source_name) if "\n" in text else load_recipe(text + "\n", name=source_name)
    data = recipe.to_dict()
    version_id = f"{recipe.id}@{recipe.version}"
    if db.session.get(RecipeVersion, version_id) is not None:
        raise Conflict(f"Recipe {recipe.id} version {recipe.version} exists already; give the new one a new version.")
    rv = RecipeVersion(id=version_id, recipe_id=recipe.id, version=str(recipe.version), product_code=recipe.product.code,
                       status=RecipeStatus.DRAFT.value, source_name=source_name[:300], source_text=text, data=data,
                       hash=recipe_hash(data), created_at=utcnow(), created_by=actor.id)
    db.session.add(rv)
    record(actor, "recipe.imported", ("recipe_version", version_id),
           after={"recipe": recipe.id, "version": str(recipe.version), "product": recipe.product.code,
                  "hash": rv.hash, "source": rv.source_name, "status": rv.status})
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(f"Recipe {recipe.id} version {recipe.version} was imported by someone else at the same moment.") from None
    return rv


def import_file(actor: Actor, path: str | Path) -> RecipeVersion:
    path = Path(path)
    load_recipe(path)  # line-numbered problems name the file
    return import_recipe(actor, path.read_text(encoding="utf-8-sig"), str(path.name))


def _transition(actor: Actor, rv: RecipeVersion, allowed_from: tuple[str, ...], to: RecipeStatus, action: str,
                reason: str | None = None) -> None:
    if rv.status not in allowed_from:
        raise Conflict(f"Recipe version {rv.id} is {rv.status}; it cannot become {to.value} "
                       f"(only from {' or '.join(allowed_from)}).")
    before = rv.status
    rv.status = to.value
    record(actor, action, ("recipe_version", rv.id), before={"status": before}, after={"status": rv.status},
           reason=reason)


def submit_for_review(actor: Actor, version_id: str) -> RecipeVersion:
    rv = get_version(version_id)
    _transition(actor, rv, (RecipeStatus.DRAFT.value,), RecipeStatus.IN_REVIEW, "recipe.submitted")
    db.session.commit()
    return rv


def return_to_draft(actor: Actor, version_id: str, reason: str) -> RecipeVersion:
    if not reason or not reason.strip():
        raise ValidationFailed("A reason is required.", field="reason")
    rv = get_version(version_id)
    _transition(actor, rv, (RecipeStatus.IN_REVIEW.value,), RecipeStatus.DRAFT, "recipe.returned", reason)
    db.session.commit()
    return rv


def approve(session_row: UserSession, credentials: esig.Credentials, version_id: str, *, terminal: str | None,
            comment: str | None = None) -> RecipeVersion:
    """QA approves a version under review with an e-signature (meaning ``approved``)."""
    rv = get_version(version_id)
    user = session_row.user
    if user.id == rv.created_by:
        raise Conflict("The author of a recipe version cannot approve it; another person must.")
    actor = actor_for(user, "qa", terminal)
    _transition(actor, rv, (RecipeStatus.IN_REVIEW.value,), RecipeStatus.APPROVED, "recipe.approved")
    rv.approved_at, rv.approved_by = utcnow(), user.id
    esig.sign(session_row, credentials, "recipe_version", rv.id, "approved", role="qa", terminal=terminal,
              permission=Permission.RECIPE_APPROVE, comment=comment, commit=False)
    db.session.commit()
    return rv


def make_effective(actor: Actor, version_id: str) -> RecipeVersion:
    """Make an approved version effective; the recipe's previous effective version is superseded."""
    rv = get_version(version_id)
    if rv.status != RecipeStatus.APPROVED.value:
        raise Conflict(f"Recipe version {rv.id} is {rv.status}; only an approved version can become effective.")
    now = utcnow()
    for old in list_versions(rv.recipe_id, RecipeStatus.EFFECTIVE.value):
        _transition(actor, old, (RecipeStatus.EFFECTIVE.value,), RecipeStatus.SUPERSEDED, "recipe.superseded",
                    f"superseded by {rv.id}")
        old.ended_at = now
    _transition(actor, rv, (RecipeStatus.APPROVED.value,), RecipeStatus.EFFECTIVE, "recipe.effective")
    rv.effective_at = now
    db.session.commit()
    return rv


def retire(actor: Actor, version_id: str, reason: str) -> RecipeVersion:
    if not reason or not reason.strip():
        raise ValidationFailed("A reason is required.", field="reason")
    rv = get_version(version_id)
    _transition(actor, rv, (RecipeStatus.DRAFT.value, RecipeStatus.IN_REVIEW.value, RecipeStatus.APPROVED.value,
                            RecipeStatus.EFFECTIVE.value), RecipeStatus.RETIRED, "recipe.retired", reason)
    rv.ended_at = utcnow()
    db.session.commit()
    return rv


def usable_version(version_id: str) -> RecipeVersion:
    """The version if it may be used for production (approved or effective), else Conflict."""
    rv = get_version(version_id)
    if rv.status not in USABLE:
        raise Conflict(f"Recipe version {rv.id} is {rv.status}; only approved or effective versions can be used.")
    return rv


def diff_versions(old_id: str, new_id: str) -> list[str]:
    """What changed from one version to another, one readable line per change."""
    return diff(master_of(get_version(old_id)), master_of(get_version(new_id)))
