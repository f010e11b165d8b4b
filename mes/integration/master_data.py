"""Applying master data pulled from ERP (:mod:`mes.integration.adapters`) through the
service layer, as the ERP peer's system actor: new items are created (an item already here
is never overwritten; a difference is reported for a person to decide), released work
orders not yet here are created and released, and BOM versions are checked against the
recipe versions the MES knows (the BOM lives in the approved recipe; ERP only names it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mes.audit.log import Actor
from mes.db import db
from mes.errors import MESError
from mes.integration.adapters import MasterDataAdapter


@dataclass
class SyncReport:
    """What one pull changed and what it left for a person."""

    unchanged: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"unchanged": self.unchanged, "created": self.created, "differences": self.differences,
                "refused": self.refused}


def _item(actor: Actor, rec: dict[str, Any], report: SyncReport) -> None:
    from mes.materials import lots
    from mes.materials.models import Item

    code = str(rec.get("code", ""))
    have = db.session.get(Item, code)
    if have is None:
        lots.create_item(actor, code, rec.get("name", ""), rec.get("base_uom", ""), rec.get("kind", ""),
                         shelf_life_days=rec.get("shelf_life_days"), retest_days=rec.get("retest_days"))
        report.created.append(f"item {code}")
        return
    diff = [k for k in ("name", "base_uom", "kind") if k in rec and getattr(have, k) != rec[k]]
    if diff:
        report.differences.append(f"item {code}: ERP differs in {', '.join(diff)}")


def _work_order(actor: Actor, rec: dict[str, Any], report: SyncReport) -> None:
    from mes.execution import work_orders as wos
    from mes.execution.models import WorkOrder, WorkOrderStatus

    if rec.get("status", "released") != "released":
        return
    wo_id = str(rec.get("work_order_id", ""))
    have = db.session.get(WorkOrder, wo_id)
    if have is not None and have.status != WorkOrderStatus.CREATED.value:
        return
    qty = rec.get("quantity") or {}
    if have is None:
        wos.create_work_order(actor, rec.get("item", ""), str(qty.get("value", "")), str(qty.get("uom", "")),
                              rec.get("bom_version", ""), work_order_id=wo_id, line=rec.get("line"), erp_ref=wo_id)
    wos.release_work_order(actor, wo_id)
    report.created.append(f"work order {wo_id}")


def _bom(rec: dict[str, Any], report: SyncReport) -> None:
    from mes.execution.models import RecipeVersion

    version = str(rec.get("bom_version", ""))
    if db.session.get(RecipeVersion, version) is None:
        report.differences.append(f"BOM {version}: no recipe version of that id in the MES")


def sync(actor: Actor, adapter: MasterDataAdapter) -> SyncReport:
    """Pull every resource (conditionally) and apply what changed; refusals are reported, not raised."""
    report = SyncReport()
    for resource, pulled in adapter.pull_all().items():
        if not pulled.changed:
            report.unchanged.append(resource)
            continue
        for rec in pulled.records:
            try:
                if resource == "items":
                    _item(actor, rec, report)
                elif resource == "work_orders":
                    _work_order(actor, rec, report)
                else:
                    _bom(rec, report)
            except MESError as exc:
                db.session.rollback()
                report.refused.append(f"{resource} {rec.get('code') or rec.get('work_order_id') or '?'}: {exc.detail}")
    return report
