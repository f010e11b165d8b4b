"""Service layer for materials (the package's public surface; the code is in
:mod:`~mes.materials.common` < :mod:`~mes.materials.lots` < :mod:`~mes.materials.consumption`
< :mod:`~mes.materials.genealogy` < :mod:`~mes.materials.views`): items, lots and their QA status, holds, containers,
consumption and its reversal, produced lots and lot genealogy.

Every state change is one transaction with its audit entry (and, where events.md names
one, its outbox event): ``mes.material.consumed.v1``,
``mes.material.consumption_reversed.v1``, ``mes.finished_goods.produced.v1``. Functions
take the acting :class:`~mes.audit.log.Actor` explicitly and never look at a request, so
the API, the CLI and the batch execution engine are thin shells over them.

Whether a lot may be used is answered by :func:`check_usable` with a sentence the kiosk
shows as it is. :func:`consume` asks the same question again *inside* its transaction,
after taking the audit log's append lock and then locking the lot (shared) and the
container (exclusive) on PostgreSQL; on SQLite the whole transaction holds the database
write lock (``BEGIN IMMEDIATE``). So a hold placed, or the last kilogram taken, by someone
else a moment earlier is always seen, two consumptions racing for the same material cannot
both succeed, and a caller that recorded its own entry first cannot deadlock with us.
CHECK constraints keep container stock between zero and what was received even if code
were wrong.

Dates (expiry, retest, manufacture) are calendar dates at the plant (``MES_TIMEZONE``, see
:mod:`mes.plant_time`): a lot may be used through its expiry date and its retest date, and
not from the day after.
"""

from __future__ import annotations

from mes.materials.common import (  # noqa: F401
    CONSUMED,
    CONSUMPTION_REVERSED,
    MAX_TRACE_DEPTH,
    PRODUCED,
    InsufficientQuantity,
    LotNotUsable,
    _append_lock_first,
    _commit,
    _finish,
    _iso,
    _locked,
    _quantity,
    _same_dimension,
    _short,
    _to_storage,
)
from mes.materials.consumption import (  # noqa: F401
    batches_consuming_conditionally,
    consume,
    consumed_event_id,
    consumptions,
    get_consumption,
    open_conditional_lots,
    produce,
    reversal_of,
    reverse_consumption,
)
from mes.materials.genealogy import (  # noqa: F401
    _TRACE_DIRECTIONS,
    _TRACE_SQL,
    Trace,
    TraceLink,
    TraceLot,
    _reading,
    _trace,
    _trace_sql,
    trace_backward,
    trace_forward,
)
from mes.materials.lots import (  # noqa: F401
    ContainerIn,
    Usability,
    _container_json,
    _hold_json,
    _item_label,
    _locked_hold,
    _new_container,
    _usability,
    check_usable,
    container_received,
    container_remaining,
    containers_of,
    create_item,
    dispose_produced_lot,
    get_hold,
    get_item,
    get_lot,
    holds_of,
    list_items,
    list_lots,
    lot_record,
    lot_remaining,
    meet_conditions,
    place_hold,
    receive_lot,
    reject_lot,
    release_hold,
    release_lot,
    set_retest_date,
)
from mes.materials.models import (  # noqa: F401  the records these functions return
    Consumption,
    ConsumptionReversal,
    Container,
    GenealogyLink,
    Hold,
    HoldDisposition,
    HoldScope,
    Item,
    ItemKind,
    Lot,
    LotStatus,
)
from mes.materials.views import (  # noqa: F401
    consumption_json,
    hold_json,
    item_json,
    lot_json,
)

__all__ = [
    "Consumption",
    "ConsumptionReversal",
    "Container",
    "GenealogyLink",
    "Hold",
    "HoldDisposition",
    "HoldScope",
    "Item",
    "ItemKind",
    "Lot",
    "LotStatus",
    "MAX_TRACE_DEPTH",
    "CONSUMED",
    "CONSUMPTION_REVERSED",
    "PRODUCED",
    "LotNotUsable",
    "InsufficientQuantity",
    "_quantity",
    "_to_storage",
    "_same_dimension",
    "_iso",
    "_commit",
    "_finish",
    "_append_lock_first",
    "_locked",
    "_short",
    "get_item",
    "list_items",
    "create_item",
    "ContainerIn",
    "get_lot",
    "containers_of",
    "holds_of",
    "container_received",
    "container_remaining",
    "lot_remaining",
    "list_lots",
    "_new_container",
    "_container_json",
    "receive_lot",
    "lot_record",
    "dispose_produced_lot",
    "release_lot",
    "reject_lot",
    "set_retest_date",
    "get_hold",
    "_hold_json",
    "place_hold",
    "_locked_hold",
    "release_hold",
    "meet_conditions",
    "Usability",
    "_item_label",
    "_usability",
    "check_usable",
    "consume",
    "get_consumption",
    "reversal_of",
    "consumptions",
    "consumed_event_id",
    "reverse_consumption",
    "batches_consuming_conditionally",
    "open_conditional_lots",
    "produce",
    "TraceLot",
    "TraceLink",
    "Trace",
    "_TRACE_SQL",
    "_TRACE_DIRECTIONS",
    "_trace_sql",
    "_reading",
    "_trace",
    "trace_backward",
    "trace_forward",
    "lot_json",
    "hold_json",
    "consumption_json",
    "item_json",
]

# what QA signs when releasing or rejecting a lot
from mes.signatures import operations as _esig  # noqa: E402

_esig.record_provider("lot")(lot_record)
