"""Lot genealogy: backward and forward traces over the genealogy links, read in a
read-only session.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from mes import quantities as q
from mes.db import db
from mes.errors import NotFound, ValidationFailed
from mes.materials.common import (
    MAX_TRACE_DEPTH,
)
from mes.materials.models import Consumption, ConsumptionReversal

# ------------------------------------------------------------------------- genealogy


class TraceLot(NamedTuple):
    lot_id: str
    item_code: str
    item_name: str
    status: str
    depth: int  # links from the root (the root is 0), the shortest way

    def as_json(self) -> dict[str, Any]:
        return {"lot_id": self.lot_id, "item": self.item_code, "item_name": self.item_name, "status": self.status,
                "depth": self.depth}


class TraceContainer(NamedTuple):
    """``qty`` ``uom`` taken from container ``container_id`` (its live consumptions, as written)."""

    container_id: str
    qty: Decimal
    uom: str

    def as_json(self) -> dict[str, Any]:
        return {"container_id": self.container_id, "qty": q.as_json(self.qty, self.uom, keep_places=True)}


class TraceLink(NamedTuple):
    """``qty`` ``uom`` of lot ``parent_lot_id`` went into lot ``child_lot_id`` in ``batch_id``
    (places as the consumptions were written), from ``containers``, each shown on its own:
    containers are not merged in a trace."""

    parent_lot_id: str
    child_lot_id: str
    batch_id: str
    qty: Decimal
    uom: str
    containers: tuple[TraceContainer, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"parent_lot_id": self.parent_lot_id, "child_lot_id": self.child_lot_id, "batch_id": self.batch_id,
                "qty": q.as_json(self.qty, self.uom, keep_places=True),
                "containers": [c.as_json() for c in self.containers]}


class WipUse(NamedTuple):
    """``qty`` ``uom`` of lot ``lot_id`` consumed by batch ``batch_id``, which has made no lot
    yet (work in progress: a recall must reach the batch before it makes anything)."""

    lot_id: str
    batch_id: str
    work_order_id: str | None
    qty: Decimal
    uom: str

    def as_json(self) -> dict[str, Any]:
        return {"lot_id": self.lot_id, "batch_id": self.batch_id, "work_order_id": self.work_order_id,
                "qty": q.as_json(self.qty, self.uom, keep_places=True)}


@dataclass
class Trace:
    """A lot's genealogy in one direction: ``backward`` (what went into it, down to raw
    materials) or ``forward`` (everything made from it). ``lots`` holds every lot reached,
    once, at its shortest distance from the root; ``links`` every link walked, nearest
    first. ``truncated`` says the depth limit cut the walk short. :meth:`walk` and
    :meth:`tree` give the tree view (a lot reached again is marked, not expanded again)."""

    root: TraceLot
    direction: str
    max_depth: int
    lots: dict[str, TraceLot]
    links: list[TraceLink]
    truncated: bool = False
    _next: dict[str, list[TraceLink]] | None = field(default=None, repr=False)
    work_in_progress: list[WipUse] = field(default_factory=list)
    """Forward traces: batches that consumed a lot reached and have made no lot from it yet."""

    def near(self, link: TraceLink) -> str:
        """The end of ``link`` closer to the root."""
        return link.child_lot_id if self.direction == "backward" else link.parent_lot_id

    def far(self, link: TraceLink) -> str:
        return link.parent_lot_id if self.direction == "backward" else link.child_lot_id

    def next_links(self, lot_id: str) -> list[TraceLink]:
        """The links one step further from the root, out of ``lot_id``."""
        if self._next is None:
            index: dict[str, list[TraceLink]] = defaultdict(list)
            backward = self.direction == "backward"
            for link in self.links:
                index[link.child_lot_id if backward else link.parent_lot_id].append(link)
            self._next = dict(index)
        return self._next.get(lot_id, [])

    def walk(self) -> Iterator[tuple[int, TraceLink | None, TraceLot, bool]]:
        """Depth-first ``(level, link, lot, repeated)`` for printing a tree; a lot whose
        subtree was already shown is yielded once more with ``repeated`` and not expanded."""
        shown: set[str] = set()
        stack: list[tuple[int, TraceLink | None, str]] = [(0, None, self.root.lot_id)]
        while stack:
            level, link, lot_id = stack.pop()
            lot = self.lots[lot_id]
            repeated = lot_id in shown
            yield level, link, lot, repeated
            if repeated:
                continue
            shown.add(lot_id)
            for nxt in reversed(self.next_links(lot_id)):
                stack.append((level + 1, nxt, self.far(nxt)))

    def tree(self) -> dict[str, Any]:
        """Nested ``{lot…, batch_id, qty, children}``; a lot shown before has ``"repeated": true``
        and no children, so the tree stays as small as the graph."""
        root: dict[str, Any] = {**self.root.as_json(), "children": []}
        path: list[dict[str, Any]] = [root]
        for level, link, lot, repeated in self.walk():
            if link is None:
                continue
            node = {**lot.as_json(), "batch_id": link.batch_id, "qty": q.as_json(link.qty, link.uom, keep_places=True),
                    "containers": [c.as_json() for c in link.containers], "repeated": repeated, "children": []}
            del path[level:]
            path[-1]["children"].append(node)
            path.append(node)
        return root

    def as_json(self) -> dict[str, Any]:
        return {"root": self.root.as_json(), "direction": self.direction, "max_depth": self.max_depth,
                "truncated": self.truncated, "lots": [lot.as_json() for lot in self.lots.values()],
                "links": [link.as_json() for link in self.links], "tree": self.tree(),
                "work_in_progress": [w.as_json() for w in self.work_in_progress]}


# One statement per trace, on SQLite and PostgreSQL alike. The walk visits each lot once
# per distinct depth (UNION drops repeated rows), so shared inputs keep it linear in the
# size of the answer, and a cycle (which production never makes) ends at the depth limit.
# It returns the links out of every lot reached (kind 0) and every lot reached with its
# item and status (kind 1); ``reached`` is materialised once for both.
_TRACE_SQL = """
WITH RECURSIVE walk(lot_id, depth) AS (
    SELECT id, 0 FROM material_lots WHERE id = :root
    UNION
    SELECT g.{far}, w.depth + 1
    FROM walk AS w JOIN material_genealogy AS g ON g.{near} = w.lot_id
    WHERE w.depth < :max_depth
),
reached AS (SELECT lot_id, MIN(depth) AS depth FROM walk GROUP BY lot_id)
SELECT 0 AS kind, r.depth, g.parent_lot_id, g.child_lot_id, g.batch_id, g.qty, g.uom, g.qty_places
FROM reached AS r JOIN material_genealogy AS g ON g.{near} = r.lot_id
UNION ALL
SELECT 1, r.depth, r.lot_id, l.item_code, i.name, NULL, l.status, NULL
FROM reached AS r JOIN material_lots AS l ON l.id = r.lot_id JOIN material_items AS i ON i.code = l.item_code
"""
_TRACE_DIRECTIONS = {"backward": ("child_lot_id", "parent_lot_id"), "forward": ("parent_lot_id", "child_lot_id")}


def _trace_sql(direction: str, paramstyle: str) -> str:
    """The trace statement for the driver: sent as is (no SQL compiler, no Row objects;
    a trace returns thousands of rows and each object made is garbage to collect)."""
    near, far = _TRACE_DIRECTIONS[direction]
    mark = "?" if paramstyle == "qmark" else "%s"
    return _TRACE_SQL.format(near=near, far=far).replace(":root", mark).replace(":max_depth", mark)


@contextmanager
def _reading() -> Iterator[Session]:
    """The session for a read: on SQLite a transaction that does not take the write lock
    (unless the caller is already in one), ended afterwards if we started it."""
    session = db.session()
    started = not session.in_transaction()
    if started and db.engine.dialect.name == "sqlite":
        session.connection(execution_options={"mes_read_only": True})
    try:
        yield session
    finally:
        if started:
            session.rollback()


def _trace(lot_id: str, direction: str, max_depth: int) -> Trace:
    if direction not in _TRACE_DIRECTIONS:
        raise ValidationFailed("The direction is backward or forward.", field="direction")
    if not 1 <= max_depth <= 100:
        raise ValidationFailed("The depth limit is 1 to 100.", field="max_depth")
    with _reading() as session:
        conn = session.connection()
        rows = conn.exec_driver_sql(_trace_sql(direction, conn.dialect.paramstyle), (lot_id, max_depth)).fetchall()
        from_db = q.result_converter(conn.dialect.name)
    lots: dict[str, TraceLot] = {}
    walked: list[Any] = []
    truncated = False
    for row in rows:
        if row[0]:
            lots[row[2]] = TraceLot(row[2], row[3], row[4], row[6], row[1])
        elif row[1] < max_depth:
            walked.append(row)
        else:
            truncated = True
    if lot_id not in lots:
        raise NotFound(f"Lot {lot_id} is not known to the MES.")
    near, far = (3, 2) if direction == "backward" else (2, 3)
    walked.sort(key=lambda r: (r[1], r[near], r[far], r[4]))  # nearest first, then by lot and batch
    links = [TraceLink(r[2], r[3], r[4], q.with_places(from_db(r[5]), r[7]), r[6]) for r in walked]
    with _reading() as session:
        taken = _containers_used(session, links) if links else {}
    links = [link._replace(containers=taken.get((link.batch_id, link.parent_lot_id), ())) for link in links]
    trace = Trace(lots[lot_id], direction, max_depth, lots, links, truncated)
    if direction == "forward":
        trace.work_in_progress = work_in_progress(lots, links)
    return trace


def work_in_progress(lots: dict[str, TraceLot], links: list[TraceLink]) -> list[WipUse]:
    """What batches consumed of ``lots`` (not reversed) without a genealogy link from that lot
    yet: the batches still running, or finished without an output, that a recall must see.
    Totals per lot and batch in the item's base unit, exact."""
    from sqlalchemy import exists, select

    from mes.materials.models import Consumption, ConsumptionReversal, Item, Lot

    if not lots:
        return []
    linked = {(link.parent_lot_id, link.batch_id) for link in links}
    not_reversed = ~exists().where(ConsumptionReversal.consumption_id == Consumption.id)
    with _reading() as session:
        rows = session.execute(
            select(Consumption.lot_id, Consumption.batch_id, Consumption.work_order_id, Consumption.qty_stored,
                   Consumption.qty_places, Consumption.uom, Item.base_uom)
            .join(Lot, Lot.id == Consumption.lot_id).join(Item, Item.code == Lot.item_code)
            .where(Consumption.lot_id.in_(list(lots)), not_reversed)
            .order_by(Consumption.lot_id, Consumption.batch_id, Consumption.consumed_at)).all()
    totals: dict[tuple[str, str], list[Any]] = {}
    for lot_id, batch_id, wo, stored, places, uom, base in rows:
        if (lot_id, batch_id) in linked:
            continue
        entry = totals.setdefault((lot_id, batch_id), [wo, Decimal(0), base])
        entry[1] += q.convert(q.with_places(stored, places), uom, base)
    return [WipUse(lot_id, batch_id, wo, total, base) for (lot_id, batch_id), (wo, total, base) in totals.items()]


_BATCHES_PER_QUERY = 500


def _containers_used(session: Session, links: list[TraceLink]) -> dict[tuple[str, str], tuple[TraceContainer, ...]]:
    """(batch, parent lot) -> the containers its live (not reversed) consumptions came from,
    each with what was taken from it summed as written, in container order."""
    wanted = {(link.batch_id, link.parent_lot_id) for link in links}
    batches = sorted({batch for batch, _ in wanted})
    taken: dict[tuple[str, str], dict[str, tuple[Decimal, str]]] = defaultdict(dict)
    live = ~exists().where(ConsumptionReversal.consumption_id == Consumption.id)
    for start in range(0, len(batches), _BATCHES_PER_QUERY):
        rows = session.execute(
            select(Consumption.batch_id, Consumption.lot_id, Consumption.container_id, Consumption.qty_stored,
                   Consumption.qty_places, Consumption.uom)
            .where(Consumption.batch_id.in_(batches[start:start + _BATCHES_PER_QUERY]), live)
            .order_by(Consumption.consumed_at, Consumption.id))
        for batch, lot, container, value, places, uom in rows:
            if (batch, lot) not in wanted:
                continue
            qty = q.with_places(value, places)
            held = taken[(batch, lot)].get(container)
            if held is not None:
                qty, uom = held[0] + q.convert(qty, uom, held[1]), held[1]
            taken[(batch, lot)][container] = (qty, uom)
    return {key: tuple(TraceContainer(c, qty, uom) for c, (qty, uom) in sorted(by_container.items()))
            for key, by_container in taken.items()}


def trace_backward(lot_id: str, max_depth: int = MAX_TRACE_DEPTH) -> Trace:
    """Every lot that went into ``lot_id``, level by level, with quantities and batches."""
    return _trace(lot_id, "backward", max_depth)


def trace_forward(lot_id: str, max_depth: int = MAX_TRACE_DEPTH) -> Trace:
    """Every lot made from ``lot_id``, level by level (a recall's reach)."""
    return _trace(lot_id, "forward", max_depth)
