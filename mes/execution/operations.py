"""The batch execution engine's public surface: work orders, batches, steps, deviations,
corrections, review by exception and release.

The API, the kiosk, the CLI and the tests call the engine through this module
(``from mes.execution import operations as ex; ex.complete_step(...)``); it holds no logic,
only the names of the modules that do, layered bottom to top (each imports only those
below it):

* :mod:`~mes.execution.common`: event types, errors, the clock, ids, input checks, the row lock
* :mod:`~mes.execution.work_orders`: work orders and their state machine
* :mod:`~mes.execution.batches`: batches, step ordering, the blocking rule :func:`blocks`
* :mod:`~mes.execution.claims`, :mod:`~mes.execution.records`: equipment claims; recorded values
* :mod:`~mes.execution.deviations`: raising and dispositioning deviations
* :mod:`~mes.execution.refusals`: every refused step request audited, listed for review
* :mod:`mes.steps`: what each step kind validates and records (one module per kind, found in its registry)
* :mod:`~mes.execution.step_requests`: start_step, complete_step (idempotency, versions, dispatch)
* :mod:`~mes.execution.gates`: sign_gate (a gate signed in its role, without ``batch.execute``), gates_awaiting
* :mod:`~mes.execution.corrections`, :mod:`~mes.execution.release`, :mod:`~mes.execution.views`

Every change is one transaction with its audit entry (and outbox event where events.md
names one). Functions take the acting :class:`~mes.audit.log.Actor` (and, to sign, the
user's session row and :class:`~mes.signatures.operations.Credentials`) explicitly.

The engine's step clock is :func:`mes.execution.common.clock`; tests replace it by setting
``operations.clock``, which this module passes on to :mod:`~mes.execution.common` (the one
thing it does besides naming).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from mes.equipment import operations as equipment
from mes.execution import common, recipes_store
from mes.execution.batches import (
    BatchLike,
    Blocker,
    BlockerLike,
    LockedBatch,
    OpenStep,
    StepLike,
    _blocking_deviations,
    _check_can_act,
    _read_for_completion,
    _refresh,
    blocker_of,
    blocks,
    blocks_any,
    control_recipe,
    get_batch,
    get_step,
    open_predecessors,
    start_batch,
    steps_of,
)
from mes.execution.batches import (
    blocker_of as _blocker_for,
)
from mes.execution.claims import (
    _claim_reason,
    _release_claims,
    claimed_equipment,
)
from mes.execution.common import (
    BATCH_COMPLETED,
    BATCH_RELEASED,
    BLOCKING,
    DEFAULT_MAX_FAILED_WEIGHINGS,
    DEFAULT_MAX_READING_AGE_MS,
    DEVIATION_CLOSED,
    DEVIATION_RAISED,
    OPEN_BATCH,
    WORK_ORDER_STARTED,
    SessionSource,
    StepBlocked,
    StepNotReady,
    StepRefused,
    _at,
    _dec,
    _locked,
    _new_id,
    _RefuseWithDeviation,
    _text,
    clock,
)
from mes.execution.corrections import (
    CORRECTABLE,
    CORRECTABLE_STEPS,
    correct_value,
)
from mes.execution.deviations import (
    _new_deviation,
    _record_deviation,
    deviation_json,
    deviation_record,
    deviations_of,
    disposition_deviation,
    get_deviation,
    raise_deviation,
)
from mes.execution.gates import (
    gates_awaiting,
    sign_gate,
)
from mes.execution.models import (
    Batch,
    BatchStatus,
    BatchStep,
    Deviation,
    DeviationStatus,
    Disposition,
    Severity,
    StepRecord,
    StepRequest,
    StepState,
    WorkOrder,
    WorkOrderStatus,
)
from mes.execution.records import (
    _current_records,
    _record_json,
    _record_row,
    _values,
    records_of,
    values_of,
)
from mes.execution.refusals import (
    record_refusal,
    refusals_of,
)
from mes.execution.release import (
    QA_REFUSED,
    RELEASE_REFUSED,
    batch_record,
    broken_gates,
    ebr_sha256,
    exceptions,
    independent_of,
    mark_exception_reviewed,
    performed_or_verified,
    release_batch,
    release_blockers,
    review_batch,
    unreleased_consumed_lots,
    unreviewed_exceptions,
)
from mes.execution.step_requests import (
    complete_step,
    start_step,
)
from mes.execution.views import (
    batch_json,
    step_json,
)
from mes.execution.work_orders import (
    _wo_transition,
    cancel_work_order,
    create_work_order,
    dispatch_work_order,
    get_work_order,
    release_work_order,
    work_order_json,
)
from mes.materials import operations as materials
from mes.signatures import operations as esig
from mes.steps import registry as step_kinds
from mes.steps.signature import batch_step_record

__all__ = [
    "WORK_ORDER_STARTED",
    "DEVIATION_RAISED",
    "DEVIATION_CLOSED",
    "BATCH_COMPLETED",
    "BATCH_RELEASED",
    "QA_REFUSED",
    "RELEASE_REFUSED",
    "BLOCKING",
    "DEFAULT_MAX_FAILED_WEIGHINGS",
    "DEFAULT_MAX_READING_AGE_MS",
    "record_refusal",
    "refusals_of",
    "OPEN_BATCH",
    "SessionSource",
    "clock",
    "StepNotReady",
    "StepBlocked",
    "StepRefused",
    "_RefuseWithDeviation",
    "_text",
    "_dec",
    "_at",
    "_new_id",
    "_locked",
    "get_work_order",
    "work_order_json",
    "create_work_order",
    "_wo_transition",
    "release_work_order",
    "dispatch_work_order",
    "cancel_work_order",
    "OpenStep",
    "LockedBatch",
    "Blocker",
    "BatchLike",
    "StepLike",
    "BlockerLike",
    "_read_for_completion",
    "control_recipe",
    "get_batch",
    "steps_of",
    "get_step",
    "start_batch",
    "_blocking_deviations",
    "blocks",
    "blocker_of",
    "blocks_any",
    "open_predecessors",
    "_refresh",
    "_check_can_act",
    "_blocker_for",
    "claimed_equipment",
    "_release_claims",
    "_claim_reason",
    "_current_records",
    "_record_json",
    "records_of",
    "_values",
    "values_of",
    "_record_row",
    "_new_deviation",
    "_record_deviation",
    "raise_deviation",
    "get_deviation",
    "deviations_of",
    "deviation_record",
    "deviation_json",
    "disposition_deviation",
    "batch_step_record",
    "start_step",
    "complete_step",
    "CORRECTABLE",
    "CORRECTABLE_STEPS",
    "correct_value",
    "exceptions",
    "ebr_sha256",
    "batch_record",
    "release_blockers",
    "mark_exception_reviewed",
    "unreviewed_exceptions",
    "independent_of",
    "performed_or_verified",
    "unreleased_consumed_lots",
    "broken_gates",
    "sign_gate",
    "gates_awaiting",
    "review_batch",
    "release_batch",
    "step_json",
    "batch_json",
    "Batch",
    "BatchStatus",
    "BatchStep",
    "Deviation",
    "DeviationStatus",
    "Disposition",
    "Severity",
    "StepRecord",
    "StepRequest",
    "StepState",
    "WorkOrder",
    "WorkOrderStatus",
    "common",
    "esig",
    "equipment",
    "materials",
    "recipes_store",
]


class _Surface(types.ModuleType):
    """This module's type: setting ``clock`` here (the tests' hook) sets the engine's clock."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "clock":
            common.clock = value
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Surface
# Loading the kinds registers the signature gate's record provider (what a gate signs) with
# the e-signature module.
step_kinds.load()
