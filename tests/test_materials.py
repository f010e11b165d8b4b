"""Materials: lot lifecycle and QA disposition, usability, holds, consumption and its
reversal, racing consumptions, outbox events, the HTTP API (events.md §1, §4; Part 11)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from mes.audit.log import Actor
from mes.audit.models import AuditEntry
from mes.db import db
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.integration.models import OutboxEvent
from mes.materials import operations as ops
from mes.materials.models import Consumption, Container, Lot
from tests.helpers import PASSWORD, logged_in, reject_lot_as_qa, release_lot_as_qa, seed

QA = Actor("qa1", "QA One", "qa", "QA-WS-01")
SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
OP = Actor("operator1", "Operator One", "operator", "KIOSK-01")
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _items() -> None:
    ops.create_item(SUP, "API-PARA", "Paracetamol", "kg", "api", shelf_life_days=730, retest_days=365)
    ops.create_item(SUP, "EXC-MCC", "Microcrystalline cellulose", "kg", "excipient")
    ops.create_item(SUP, "SOL-ETH", "Ethanol 96 %", "L", "raw_material")
    ops.create_item(SUP, "PKG-CARTON", "Carton 30s", "pcs", "packaging")


def _lot(lot_id: str, item: str = "API-PARA", containers: list[tuple[str, str]] | None = None, *,
         release: bool = True, **kw: Any) -> Lot:
    specs = [ops.ContainerIn(qty, uom, f"{lot_id}-C{i + 1}") for i, (qty, uom) in enumerate(containers or [("10", "kg")])]
    lot = ops.receive_lot(SUP, item, specs, lot_id=lot_id, supplier="Acme Pharma", supplier_lot=f"S-{lot_id}", **kw)
    if release:
        release_lot_as_qa(lot_id, "CoA reviewed, identity test passed")
    return lot


def _entries(entity_id: str, action: str | None = None) -> list[dict[str, Any]]:
    stmt = select(AuditEntry).where(AuditEntry.entity_id == entity_id).order_by(AuditEntry.seq)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    return [json.loads(r.entry_bytes) for r in db.session.execute(stmt).scalars()]


def _no_floats(raw: bytes) -> dict[str, Any]:
    def refuse(value: str) -> Any:
        raise AssertionError(f"float {value} in an event")

    return json.loads(raw, parse_float=refuse)


def _events(type_: str) -> list[dict[str, Any]]:
    rows = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == type_).order_by(OutboxEvent.audit_seq))
    return [_no_floats(r.body) for r in rows.scalars()]


def _remaining(container_id: str) -> Decimal:
    db.session.expire_all()
    return ops.container_remaining(db.session.get(Container, container_id))


# ------------------------------------------------------------------ lot lifecycle


def test_lot_lifecycle_and_qa_disposition_are_audited_with_reasons(app: Flask) -> None:
    _items()
    lot = _lot("L-100", containers=[("25", "kg"), ("12.5", "kg")], release=False,
               manufactured_date=date(2026, 10, 1))
    assert lot.status == "quarantine"
    # expiry and retest come from the item's shelf life and retest interval
    assert lot.expiry_date == date(2026, 10, 1) + timedelta(days=730)
    assert lot.retest_date == date(2026, 10, 1) + timedelta(days=365)
    assert ops.lot_remaining("L-100") == (Decimal("37.5"), "kg")
    with pytest.raises(ValidationFailed):
        release_lot_as_qa("L-100", "   ")
    release_lot_as_qa("L-100", "CoA reviewed, identity test passed")
    with pytest.raises(Conflict, match="already released"):
        release_lot_as_qa("L-100", "again")
    reject_lot_as_qa("L-100", "Supplier recall R-12")
    with pytest.raises(Conflict, match="never released again"):
        release_lot_as_qa("L-100", "changed my mind")
    with pytest.raises(Conflict, match="exists already"):
        _lot("L-100")
    received, released, rejected = [e for e in _entries("L-100") if e["action"] != "esig.signed"]
    # QA's release and rejection are e-signatures (meaning, the reason as the comment)
    signed = [(e["signature"]["meaning"], e["after"]["comment"]) for e in _entries("L-100", "esig.signed")]
    assert signed == [("released", "CoA reviewed, identity test passed"), ("rejected", "Supplier recall R-12")]
    assert received["action"] == "material.lot.received" and received["after"]["status"] == "quarantine"
    assert received["after"]["containers"][1]["received"] == {"value": "12.5", "uom": "kg"}
    assert (released["action"], released["before"], released["after"], released["reason"]) == (
        "material.lot.released", {"status": "quarantine"}, {"status": "released", "esig_meaning": "released"},
        "CoA reviewed, identity test passed")
    assert released["actor"] == {"id": "qa1", "name": "Qa One", "role": "qa"} and released["terminal"] == "QA-WS-01"
    assert (rejected["action"], rejected["before"], rejected["after"], rejected["reason"]) == (
        "material.lot.rejected", {"status": "released"}, {"status": "rejected", "esig_meaning": "rejected"},
        "Supplier recall R-12")


def test_receipt_is_validated(app: Flask) -> None:
    _items()
    with pytest.raises(NotFound):
        _lot("L-1", item="NOPE")
    with pytest.raises(ValidationFailed, match="different kind of unit"):
        _lot("L-1", containers=[("5", "L")])
    with pytest.raises(ValidationFailed, match="more than zero"):
        _lot("L-1", containers=[("0", "kg")])
    with pytest.raises(ValidationFailed, match="never floats"):
        _lot("L-1", containers=[(2.5, "kg")])  # type: ignore[list-item]
    with pytest.raises(ValidationFailed, match="material unit"):
        _lot("L-1", containers=[("5", "lb")])
    with pytest.raises(ValidationFailed, match="decimal places"):
        _lot("L-1", containers=[("0.0000001", "g")])
    assert db.session.get(Lot, "L-1") is None


# -------------------------------------------------------------------- usability


def test_every_refusal_reason_of_check_usable(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    _items()
    _lot("L-OK")
    _lot("L-Q", release=False)
    _lot("L-REJ")
    reject_lot_as_qa("L-REJ", "Failed assay")
    with monkeypatch.context() as before_expiry:  # received and released while it was still good
        before_expiry.setattr("mes.materials.lots.utcnow", lambda: datetime(2026, 11, 1, 8, 0, tzinfo=UTC))
        _lot("L-EXP", expiry_date=date(2026, 11, 22))
    _lot("L-RT", retest_date=date(2026, 11, 1))
    _lot("L-HOLD")
    ops.place_hold(QA, "L-HOLD", "consumption", "supplier CoA mismatch.", ncr_id="NCR-77")
    _lot("L-SHIP")
    ops.place_hold(QA, "L-SHIP", "shipment", "customer complaint")
    _lot("L-EMPTY", containers=[("1", "kg")])
    ops.consume(OP, "L-EMPTY", "L-EMPTY-C1", "1", "kg", "B-1")

    assert ops.check_usable("L-OK", "API-PARA", NOW) == ops.Usability("L-OK", "ok", "")
    assert ops.check_usable("L-SHIP", "API-PARA", NOW).ok  # a shipment hold does not stop consumption
    expected = {
        ("L-OK", "EXC-MCC"): ("wrong_item", "Lot L-OK is Paracetamol (API-PARA), but this step needs "
                                            "Microcrystalline cellulose (EXC-MCC). Take the right material."),
        ("L-Q", "API-PARA"): ("quarantine", "Lot L-Q is in quarantine: QA has not released it yet. "
                                            "Do not use it; ask QA."),
        ("L-REJ", "API-PARA"): ("rejected", "Lot L-REJ was rejected by QA and must not be used. "
                                            "Put it aside and tell QA."),
        ("L-EXP", "API-PARA"): ("expired", "Lot L-EXP expired on 2026-11-22. Do not use it; put it aside and tell QA."),
        ("L-RT", "API-PARA"): ("retest_due", "Lot L-RT was due for retest on 2026-11-01 and has not been retested. "
                                             "Do not use it; ask QA."),
        ("L-HOLD", "API-PARA"): ("on_hold", "Lot L-HOLD is on hold: NCR-77 supplier CoA mismatch. "
                                            "QA can release the hold."),
        ("L-EMPTY", "API-PARA"): ("empty", "Lot L-EMPTY has no material left. Use another lot."),
        ("L-NONE", "API-PARA"): ("unknown_lot", "Lot L-NONE is not known to the MES. Check the label and scan again."),
    }
    for (lot_id, item), (code, sentence) in expected.items():
        u = ops.check_usable(lot_id, item, NOW)
        assert not u and (u.code, u.reason) == (code, sentence), lot_id
    # a lot may be used through its expiry date, at the plant's local date
    assert ops.check_usable("L-EXP", "API-PARA", datetime(2026, 11, 22, 23, 59, tzinfo=UTC)).ok
    app.config["MES_TIMEZONE"] = "Asia/Shanghai"  # 23:59 UTC is already the 23rd in Shanghai
    assert ops.check_usable("L-EXP", "API-PARA", datetime(2026, 11, 22, 23, 59, tzinfo=UTC)).code == "expired"
    # QA records a retest: usable again
    ops.set_retest_date(QA, "L-RT", date(2027, 11, 1), "Retested: assay 99.8 %")
    assert ops.check_usable("L-RT", "API-PARA", NOW).ok
    # consumption is refused with the same sentence, as a 409 carrying the code
    with pytest.raises(ops.LotNotUsable) as refused:
        ops.consume(OP, "L-HOLD", "L-HOLD-C1", "1", "kg", "B-1")
    assert refused.value.detail == expected[("L-HOLD", "API-PARA")][1]
    assert refused.value.status == 409 and refused.value.extra["code"] == "on_hold"
    with pytest.raises(ops.LotNotUsable, match="needs Microcrystalline"):
        ops.consume(OP, "L-OK", "L-OK-C1", "1", "kg", "B-1", item_code="EXC-MCC")
    with pytest.raises(ops.LotNotUsable, match="in quarantine"):
        ops.consume(OP, "L-Q", "L-Q-C1", "1", "kg", "B-1")
    assert _remaining("L-HOLD-C1") == Decimal(10) and _remaining("L-Q-C1") == Decimal(10)


def test_holds_and_conditional_release_flag_the_consuming_batch(app: Flask) -> None:
    _items()
    _lot("L-7")
    hold = ops.place_hold(QA, "L-7", "all", "supplier CoA mismatch", ncr_id="NCR-77", hold_id="H-QMS-1")
    second = ops.place_hold(SUP, "L-7", "consumption", "label damaged")
    with pytest.raises(ops.LotNotUsable, match="NCR-77"):
        ops.consume(OP, "L-7", "L-7-C1", "1", "kg", "B-1")
    with pytest.raises(ValidationFailed, match="conditions"):
        ops.release_hold(QA, hold.id, "conditional_release", "use allowed")
    ops.release_hold(QA, hold.id, "conditional_release", "Risk assessed in NCR-77",
                     conditions="Use only after extra identity test per batch")
    with pytest.raises(Conflict, match="already released"):
        ops.release_hold(QA, hold.id, "release", "again")
    assert ops.check_usable("L-7", "API-PARA").code == "on_hold"  # the second hold still blocks
    ops.release_hold(QA, second.id, "release", "Relabelled")
    usable = ops.check_usable("L-7", "API-PARA")
    assert usable.ok and usable.conditional and "released under conditions (NCR-77)" in usable.reason
    c1 = ops.consume(OP, "L-7", "L-7-C1", "2", "kg", "B-1")
    c2 = ops.consume(OP, "L-7", "L-7-C1", "1", "kg", "B-2")
    assert c1.conditional and c2.conditional and c1.conditional_hold_id == "H-QMS-1"
    assert ops.batches_consuming_conditionally("L-7") == ["B-1", "B-2"]
    assert ops.open_conditional_lots("B-1") == ["L-7"]
    consumed = _events("mes.material.consumed.v1")
    assert [e["data"]["conditional"] for e in consumed] == [True, True]
    assert _entries(c1.id)[0]["after"]["conditional"] is True
    # QA declares the conditions met: the lot is plainly usable, the batches' flag stays on record
    ops.meet_conditions(QA, hold.id, "Identity tests passed for B-1 and B-2")
    assert ops.open_conditional_lots("B-1") == []
    c3 = ops.consume(OP, "L-7", "L-7-C1", "1", "kg", "B-3")
    assert not c3.conditional
    assert ops.batches_consuming_conditionally("L-7") == ["B-1", "B-2"]
    actions = [e["action"] for e in _entries("L-7") if e["action"] != "esig.signed"]
    assert actions == ["material.lot.received", "material.lot.released", "material.hold.placed", "material.hold.placed",
                       "material.hold.released", "material.hold.released", "material.hold.conditions_met"]
    placed = _entries("L-7", "material.hold.placed")[0]
    assert placed["after"]["ncr_id"] == "NCR-77" and placed["reason"] == "supplier CoA mismatch"


def test_a_hold_released_with_reject_rejects_the_lot(app: Flask) -> None:
    _items()
    _lot("L-8")
    hold = ops.place_hold(QA, "L-8", "all", "contamination suspected", ncr_id="NCR-80")
    ops.release_hold(QA, hold.id, "reject", "Contamination confirmed")
    db.session.expire_all()
    assert db.session.get(Lot, "L-8").status == "rejected"
    assert ops.check_usable("L-8", "API-PARA").code == "rejected"
    assert [e["action"] for e in _entries("L-8")][-2:] == ["material.hold.released", "material.lot.rejected"]


# ------------------------------------------------------------------- consumption


def test_consumption_lowers_remaining_with_exact_unit_conversion(app: Flask) -> None:
    _items()
    _lot("L-API", containers=[("10", "kg")])
    _lot("L-ETH", item="SOL-ETH", containers=[("2.5", "L")])
    _lot("L-CART", item="PKG-CARTON", containers=[("500", "pcs")])
    c = ops.consume(OP, "L-API", "L-API-C1", "250", "g", "B-1", "S-10", "WO-1", "DISP-01")
    assert _remaining("L-API-C1") == Decimal("9.75")
    ops.consume(OP, "L-API", "L-API-C1", Decimal("0.1"), "mg", "B-1")
    assert _remaining("L-API-C1") == Decimal("9.7499999")
    ops.consume(OP, "L-API", "L-API-C1", "1.234567", "g", "B-1")
    assert _remaining("L-API-C1") == Decimal("9.748765333")
    ops.consume(OP, "L-ETH", "L-ETH-C1", "750", "mL", "B-1")
    assert _remaining("L-ETH-C1") == Decimal("1.75")
    ops.consume(OP, "L-CART", "L-CART-C1", "30", "pcs", "B-1")
    assert _remaining("L-CART-C1") == Decimal(470)
    assert ops.lot_remaining("L-API") == (Decimal("9.748765333"), "kg")
    row = db.session.get(Consumption, c.id)
    assert (row.qty, row.uom, row.deducted_qty, row.storage_uom) == (Decimal("250"), "g", Decimal("250"), "g")
    entry = _entries(c.id)[0]
    assert entry["action"] == "material.consumed" and entry["batch"] == "B-1"
    assert entry["after"]["qty"] == {"value": "250", "uom": "g"}
    assert entry["before"]["remaining"] == {"value": "10", "uom": "kg"}
    assert entry["after"]["remaining"] == {"value": "9.75", "uom": "kg"}
    with pytest.raises(ValidationFailed, match="cannot be converted"):
        ops.consume(OP, "L-API", "L-API-C1", "1", "L", "B-1")
    with pytest.raises(ValidationFailed, match="decimal places"):
        ops.consume(OP, "L-API", "L-API-C1", "0.0001", "mg", "B-1")
    with pytest.raises(ValidationFailed, match="never floats"):
        ops.consume(OP, "L-API", "L-API-C1", 0.25, "kg", "B-1")  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed, match="belongs to lot L-ETH"):
        ops.consume(OP, "L-API", "L-ETH-C1", "1", "mL", "B-1")


def test_overdraw_is_refused_and_records_nothing(app: Flask) -> None:
    _items()
    _lot("L-1", containers=[("10", "kg"), ("1", "kg")])
    before = db.session.execute(select(AuditEntry.seq).order_by(AuditEntry.seq.desc())).scalar()
    with pytest.raises(ops.InsufficientQuantity) as refused:
        ops.consume(OP, "L-1", "L-1-C2", "1000.001", "g", "B-1")
    assert refused.value.detail == "Container L-1-C2 of lot L-1 holds only 1 kg; 1000.001 g cannot be taken from it."
    assert refused.value.status == 409
    ops.consume(OP, "L-1", "L-1-C2", "1000", "g", "B-1")
    with pytest.raises(ops.InsufficientQuantity, match="L-1-C2 of lot L-1 is empty"):
        ops.consume(OP, "L-1", "L-1-C2", "1", "mg", "B-1")
    assert _remaining("L-1-C2") == 0 and _remaining("L-1-C1") == 10
    after = db.session.execute(select(AuditEntry.seq).order_by(AuditEntry.seq.desc())).scalar()
    assert after == before + 1  # only the consumption that fitted
    # the database itself refuses stock below zero
    db.session.commit()
    with pytest.raises(DatabaseError, match="(?i)check constraint"):
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE material_containers SET remaining_qty = remaining_qty - 1 WHERE id = 'L-1-C2'"))


def test_racing_consumptions_for_the_last_kilogram_exactly_one_wins(app: Flask, backend: str) -> None:
    _items()
    rounds, racers = (5, 4) if backend == "postgresql" else (3, 3)
    for r in range(rounds):
        _lot(f"L-R{r}", containers=[("1", "kg")])
    outcomes: list[tuple[int, str]] = []
    lock = threading.Lock()

    for r in range(rounds):
        barrier = threading.Barrier(racers)

        def work(w: int, r: int = r, barrier: threading.Barrier = barrier) -> None:
            with app.app_context():
                try:
                    barrier.wait()
                    ops.consume(Actor(f"op-{w}", f"Operator {w}", "operator", f"K-{w}"), f"L-R{r}", f"L-R{r}-C1",
                                "1", "kg", f"B-{w}")
                    result = "won"
                except Conflict as exc:
                    result = f"conflict: {exc.detail}"
                except BaseException as exc:  # noqa: BLE001
                    result = f"error: {exc!r}"
                finally:
                    db.session.remove()
                with lock:
                    outcomes.append((r, result))

        threads = [threading.Thread(target=work, args=(w,)) for w in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for r in range(rounds):
        results = [res for rr, res in outcomes if rr == r]
        assert results.count("won") == 1, results
        assert all(res.startswith("conflict: ") for res in results if res != "won"), results
        assert _remaining(f"L-R{r}-C1") == 0
        assert len(ops.consumptions(lot_id=f"L-R{r}")) == 1
    assert len(_events("mes.material.consumed.v1")) == rounds


class _WaitingInDatabase:
    """Tells when another transaction is blocked in the database behind ours.

    PostgreSQL says so itself (a backend of this database waiting for a lock). SQLite has no
    such view; there every write transaction begins with ``BEGIN IMMEDIATE`` and waits in
    the busy handler while another writer holds the lock, so another thread being inside
    that statement is the same condition."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._in_begin: set[int] = set()
        if engine.dialect.name == "sqlite":
            sa_event.listen(engine, "before_cursor_execute", self._before)
            sa_event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.strip().upper() == "BEGIN IMMEDIATE":
            with self._lock:
                self._in_begin.add(threading.get_ident())

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with self._lock:
            self._in_begin.discard(threading.get_ident())

    def _other_is_waiting(self) -> bool:
        if self.engine.dialect.name == "sqlite":
            with self._lock:
                return bool(self._in_begin - {threading.get_ident()})
        with self.engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).scalar())

    def wait_for_other(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._other_is_waiting():
            if time.monotonic() > deadline:
                raise AssertionError(f"no other transaction came to wait behind this one within {timeout} s")
            time.sleep(0.01)

    def close(self) -> None:
        if self.engine.dialect.name == "sqlite":
            sa_event.remove(self.engine, "before_cursor_execute", self._before)
            sa_event.remove(self.engine, "after_cursor_execute", self._after)


def test_a_caller_that_recorded_first_cannot_deadlock_with_a_consumption(app: Flask) -> None:
    """The batch engine records its step entry, then consumes, in one transaction. A direct
    consumption of the same container that starts in between must queue, not deadlock."""
    from mes.audit.log import record

    _items()
    _lot("L-1", containers=[("10", "kg")])
    recorded = threading.Event()
    errors: list[BaseException] = []
    waiting = _WaitingInDatabase(db.engine)

    def engine() -> None:
        with app.app_context():
            try:
                record(OP, "batch.step.completed", ("batch_step", "B-1/S-1"), batch="B-1", after={"ok": True})
                recorded.set()
                waiting.wait_for_other()  # the other consumption has locked what it can and waits for us
                ops.consume(OP, "L-1", "L-1-C1", "1", "kg", "B-1", "S-1")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                recorded.set()
                db.session.remove()

    def direct() -> None:
        with app.app_context():
            try:
                recorded.wait(10)
                ops.consume(SUP, "L-1", "L-1-C1", "2", "kg", "B-2")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=engine), threading.Thread(target=direct)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    waiting.close()
    assert not errors, errors
    assert _remaining("L-1-C1") == Decimal(7)
    assert sorted(c.batch_id for c in ops.consumptions(lot_id="L-1")) == ["B-1", "B-2"]


def test_reversal_restores_once_with_a_reason_and_is_audited(app: Flask) -> None:
    _items()
    _lot("L-1", containers=[("10", "kg")])
    c = ops.consume(OP, "L-1", "L-1-C1", "2.5", "kg", "B-1", "S-1", "WO-9", "DISP-01")
    with pytest.raises(ValidationFailed, match="reason"):
        ops.reverse_consumption(SUP, c.id, " ")
    rev = ops.reverse_consumption(SUP, c.id, "Wrong container scanned")
    assert rev.restored_qty == Decimal("2500") and rev.storage_uom == "g"
    assert _remaining("L-1-C1") == Decimal(10)
    with pytest.raises(Conflict, match="at most once"):
        ops.reverse_consumption(SUP, c.id, "again")
    with pytest.raises(NotFound):
        ops.reverse_consumption(SUP, "no-such-consumption", "why")
    _consumed, reversed_ = _entries(c.id)
    assert reversed_["action"] == "material.consumption.reversed" and reversed_["batch"] == "B-1"
    assert reversed_["reason"] == "Wrong container scanned" and reversed_["actor"]["id"] == "supervisor1"
    assert reversed_["before"]["remaining"] == {"value": "7.5", "uom": "kg"}
    assert reversed_["after"]["remaining"] == {"value": "10", "uom": "kg"}
    assert [row.id for row in ops.consumptions(batch_id="B-1")] == [c.id]  # nothing deleted
    # the database refuses to rewrite a consumption or its reversal, or to remove any material record
    ops.place_hold(QA, "L-1", "shipment", "customer complaint")
    db.session.commit()
    for statement in ("UPDATE material_consumptions SET qty = 1", "DELETE FROM material_consumptions",
                      "UPDATE material_consumption_reversals SET reason = 'x'", "DELETE FROM material_lots",
                      "DELETE FROM material_containers", "DELETE FROM material_holds", "DELETE FROM material_items"):
        with pytest.raises(DatabaseError, match="refused|never"):
            with db.engine.begin() as conn:
                conn.execute(text(statement))
        assert statement


def test_outbox_events_follow_events_md(app: Flask) -> None:
    _items()
    _lot("L-API", containers=[("20", "kg")])
    c = ops.consume(OP, "L-API", "L-API-C1", "12.50", "kg", "B-2026-0001", "S-3", "WO-77", "DISP-01")
    ops.reverse_consumption(SUP, c.id, "Weighed into the wrong vessel")
    c2 = ops.consume(OP, "L-API", "L-API-C1", "250", "g", "B-2026-0001", "S-3", "WO-77", "DISP-01")
    ops.produce(SUP, "API-PARA", "L-RECOVERED", "240", "g", "B-2026-0001", work_order_id="WO-77",
                consumption_ids=[c2.id])
    (consumed, consumed2), (reversed_,), (produced,) = (
        _events("mes.material.consumed.v1"), _events("mes.material.consumption_reversed.v1"),
        _events("mes.finished_goods.produced.v1"))
    for event in (consumed, consumed2, reversed_, produced):
        assert event["specversion"] == "1.0" and event["subject"] == "batch/B-2026-0001"
        assert event["correlationid"] == "WO-77" and event["partitionkey"] == "B-2026-0001"
    assert [e["sequence"] for e in (consumed, reversed_, consumed2, produced)] == ["1", "2", "3", "4"]
    data = consumed["data"]
    assert {"work_order_id", "batch_id", "step_id", "lot_id", "item", "qty", "material_use", "location", "consumed_at",
            "performed_by"} <= set(data)
    assert data["qty"] == {"value": "12.50", "uom": "kg"}
    assert (data["work_order_id"], data["batch_id"], data["step_id"], data["lot_id"], data["item"], data["material_use"],
            data["location"], data["performed_by"]) == ("WO-77", "B-2026-0001", "S-3", "L-API", "API-PARA", "Consumed",
                                                         "DISP-01", "operator1")
    assert data["consumed_at"].endswith("Z") and consumed["time"] == data["consumed_at"]
    assert reversed_["data"]["consumed_event_id"] == consumed["id"]
    assert reversed_["data"]["qty"] == {"value": "12.50", "uom": "kg"}
    assert reversed_["data"]["reason"] == "Weighed into the wrong vessel"
    pdata = produced["data"]
    assert {"work_order_id", "batch_id", "lot_id", "item", "qty", "material_use", "consumed_lot_ids"} <= set(pdata)
    assert (pdata["lot_id"], pdata["qty"], pdata["material_use"], pdata["consumed_lot_ids"]) == (
        "L-RECOVERED", {"value": "240", "uom": "g"}, "Produced", ["L-API"])


# --------------------------------------------------------------------------- API


def test_api_items_lots_holds_release_and_reversal(app: Flask) -> None:
    seeded = seed()
    sup = logged_in(app.test_client(), seeded, "supervisor")
    qa = logged_in(app.test_client(), seeded, "qa")
    op = logged_in(app.test_client(), seeded, "operator")
    r = sup.post("/api/v1/items", {"code": "API-PARA", "name": "Paracetamol", "base_uom": "kg", "kind": "api",
                                   "shelf_life_days": 730})
    assert r.status_code == 201, r.get_json()
    assert op.post("/api/v1/items", {"code": "X", "name": "X", "base_uom": "kg", "kind": "api"}).status_code == 403
    assert [i["code"] for i in op.get("/api/v1/items").get_json()["items"]] == ["API-PARA"]
    r = sup.post("/api/v1/lots", {"id": "L-API-1", "item": "API-PARA", "supplier_lot": "ACME-99",
                                  "manufactured_date": "2026-10-01",
                                  "containers": [{"qty": "25", "uom": "kg", "label": "C-1"},
                                                 {"qty": "12.500", "uom": "kg"}]})
    assert r.status_code == 201, r.get_json()
    lot = r.get_json()["lot"]
    assert lot["status"] == "quarantine" and lot["expiry_date"] == "2028-09-30"
    assert lot["remaining"] == {"value": "37.500", "uom": "kg"}
    assert [c["id"] for c in lot["containers"]] == ["C-1", "L-API-1-C002"]
    # quantities are decimal strings: a JSON number is refused
    r = sup.post("/api/v1/lots", {"item": "API-PARA", "containers": [{"qty": 2.5, "uom": "kg"}]})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    # the kiosk reads why the lot may not be used
    got = op.get("/api/v1/lots/L-API-1?item=API-PARA").get_json()["lot"]
    assert got["usability"]["code"] == "quarantine" and "QA has not released it" in got["usability"]["reason"]
    # an operator (or a supervisor) cannot release a lot; QA can
    for who in (op, sup):
        r = who.post("/api/v1/lots/L-API-1/release", {"reason": "looks fine"})
        assert r.status_code == 403 and r.get_json()["type"].endswith("/forbidden")
    # QA's release is an e-signature: a plain reason is refused
    r = qa.post("/api/v1/lots/L-API-1/release", {"reason": "CoA reviewed"})
    assert r.status_code == 422 and r.get_json()["field"] == "password"
    r = qa.post("/api/v1/lots/L-API-1/release", {"reason": "CoA reviewed", "password": PASSWORD, "user_id": "qa1",
                                                  "esig_acknowledged": True})
    assert r.status_code == 200 and r.get_json()["lot"]["status"] == "released", r.get_json()
    assert r.get_json()["lot"]["status_changed_by"] == "qa1"
    r = qa.post("/api/v1/lots/L-API-1/release", {"reason": "again", "password": PASSWORD, "user_id": "qa1"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    # holds: placed by the supervisor, released by QA only
    r = sup.post("/api/v1/lots/L-API-1/holds", {"scope": "consumption", "reason": "supplier CoA mismatch",
                                                "ncr_id": "NCR-77"})
    assert r.status_code == 201
    hold_id = r.get_json()["hold"]["id"]
    got = op.get("/api/v1/lots/L-API-1").get_json()["lot"]
    assert got["usability"]["reason"] == "Lot L-API-1 is on hold: NCR-77 supplier CoA mismatch. QA can release the hold."
    assert sup.post(f"/api/v1/holds/{hold_id}/release", {"disposition": "release", "reason": "ok"}).status_code == 403
    r = qa.post(f"/api/v1/holds/{hold_id}/release", {"disposition": "release", "reason": "CoA corrected by supplier"})
    assert r.status_code == 200 and r.get_json()["hold"]["active"] is False
    # list with filters
    sup.post("/api/v1/lots", {"id": "L-API-2", "item": "API-PARA", "containers": [{"qty": "1", "uom": "kg"}]})
    assert [x["id"] for x in op.get("/api/v1/lots?status=released").get_json()["lots"]] == ["L-API-1"]
    assert [x["id"] for x in op.get("/api/v1/lots?item=API-PARA&limit=1").get_json()["lots"]] == ["L-API-1"]
    assert [x["id"] for x in op.get("/api/v1/lots?supplier_lot=ACME-99").get_json()["lots"]] == ["L-API-1"]
    assert op.get("/api/v1/lots?status=bogus").status_code == 422
    # consumption (by the batch engine), then reversal through the API
    c = ops.consume(OP, "L-API-1", "C-1", "5", "kg", "B-1")
    r = op.post(f"/api/v1/consumptions/{c.id}/reverse", {"reason": "wrong container"})
    assert r.status_code == 403
    r = sup.post(f"/api/v1/consumptions/{c.id}/reverse", {"reason": "wrong container"})
    assert r.status_code == 200 and r.get_json()["consumption"]["reversal"]["reason"] == "wrong container"
    r = sup.post(f"/api/v1/consumptions/{c.id}/reverse", {"reason": "again"})
    assert r.status_code == 409 and "at most once" in r.get_json()["detail"]
    rows = op.get("/api/v1/lots/L-API-1/consumptions").get_json()["consumptions"]
    assert [(x["qty"], x["reversal"] is not None) for x in rows] == [({"value": "5", "uom": "kg"}, True)]
    assert op.get("/api/v1/lots/L-NOPE").status_code == 404


def test_api_refusal_from_consumption_is_problem_json(app: Flask) -> None:
    """A refused consumption carries the operator sentence and the reason code as problem+json."""
    _items()
    _lot("L-H")
    ops.place_hold(QA, "L-H", "all", "supplier CoA mismatch", ncr_id="NCR-77")

    @app.get("/test-only/consume")
    def _consume() -> Any:  # a stand-in for the batch engine's endpoint
        ops.consume(OP, "L-H", "L-H-C1", "1", "kg", "B-1")
        return {}

    r = app.test_client().get("/test-only/consume")
    body = r.get_json()
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert body["type"].endswith("/lot-not-usable") and body["code"] == "on_hold"
    assert body["detail"] == "Lot L-H is on hold: NCR-77 supplier CoA mismatch. QA can release the hold."
