"""The role × action matrix (Part 11 §11.10(g)), enforced on the server for every action.

Each endpoint and CLI command names exactly one :class:`Permission`; the web layer's
``@requires`` decorator and the CLI check it against the roles below. Admin accounts
administer the system and never enter or sign GMP data (MHRA / FDA data integrity), so
no production permission lists ``admin``; an admin role also cannot be combined with a
production role on one account.
"""

from __future__ import annotations

import enum

from mes.users.models import Role


class Permission(str, enum.Enum):
    # production
    BATCH_VIEW = "batch.view"
    BATCH_EXECUTE = "batch.execute"
    BATCH_VERIFY = "batch.verify"
    DEVIATION_RAISE = "deviation.raise"
    DEVIATION_DISPOSE = "deviation.dispose"
    BATCH_REVIEW = "batch.review"
    BATCH_RELEASE = "batch.release"
    WORK_ORDER_MANAGE = "work_order.manage"
    MATERIAL_VIEW = "material.view"
    MATERIAL_MANAGE = "material.manage"
    MATERIAL_RELEASE = "material.release"
    EQUIPMENT_VIEW = "equipment.view"
    EQUIPMENT_MANAGE = "equipment.manage"
    DEVICE_OPERATE = "device.operate"
    OEE_VIEW = "oee.view"
    OEE_MANAGE = "oee.manage"
    OEE_CLASSIFY = "oee.classify"  # pick the reason of a line's stop (kiosk)
    RECIPE_AUTHOR = "recipe.author"
    RECIPE_APPROVE = "recipe.approve"
    # records
    AUDIT_VIEW = "audit.view"
    AUDIT_REVIEW = "audit.review"
    ESIG_SIGN = "esig.sign"
    # administration
    USERS_ADMIN = "users.admin"
    TERMINALS_ADMIN = "terminals.admin"
    TOKENS_ADMIN = "tokens.admin"
    ALARMS_VIEW = "alarms.view"
    ALARMS_ACKNOWLEDGE = "alarms.acknowledge"
    SYSTEM_MONITOR = "system.monitor"
    # integration
    INTEGRATION_EVENTS = "integration.events"
    INTEGRATION_INBOUND = "integration.inbound"
    INTEGRATION_ENDPOINTS = "integration.endpoints"
    # any authenticated user, about themselves
    SELF = "self"


_O, _S, _Q, _A, _I = Role.OPERATOR, Role.SUPERVISOR, Role.QA, Role.ADMIN, Role.INTEGRATOR

MATRIX: dict[Permission, frozenset[Role]] = {
    Permission.BATCH_VIEW: frozenset({_O, _S, _Q}),
    Permission.BATCH_EXECUTE: frozenset({_O, _S}),
    Permission.BATCH_VERIFY: frozenset({_O, _S, _Q}),
    Permission.DEVIATION_RAISE: frozenset({_O, _S, _Q}),
    Permission.DEVIATION_DISPOSE: frozenset({_Q}),
    Permission.BATCH_REVIEW: frozenset({_Q}),
    Permission.BATCH_RELEASE: frozenset({_Q}),
    Permission.WORK_ORDER_MANAGE: frozenset({_S, _I}),
    Permission.MATERIAL_VIEW: frozenset({_O, _S, _Q, _I}),
    Permission.MATERIAL_MANAGE: frozenset({_S, _Q}),
    Permission.MATERIAL_RELEASE: frozenset({_Q}),
    Permission.EQUIPMENT_VIEW: frozenset({_O, _S, _Q}),
    Permission.EQUIPMENT_MANAGE: frozenset({_S, _Q}),
    Permission.DEVICE_OPERATE: frozenset({_O, _S}),
    Permission.OEE_VIEW: frozenset({_S, _Q}),
    Permission.OEE_MANAGE: frozenset({_S}),
    Permission.OEE_CLASSIFY: frozenset({_O, _S}),
    Permission.RECIPE_AUTHOR: frozenset({_S}),
    Permission.RECIPE_APPROVE: frozenset({_Q}),
    Permission.AUDIT_VIEW: frozenset({_Q, _A}),
    Permission.AUDIT_REVIEW: frozenset({_Q}),
    Permission.ESIG_SIGN: frozenset({_O, _S, _Q}),
    Permission.USERS_ADMIN: frozenset({_A}),
    Permission.TERMINALS_ADMIN: frozenset({_A}),
    Permission.TOKENS_ADMIN: frozenset({_A}),
    Permission.ALARMS_VIEW: frozenset({_Q, _A, _S}),
    Permission.ALARMS_ACKNOWLEDGE: frozenset({_Q, _A}),
    Permission.SYSTEM_MONITOR: frozenset({_A, _I}),
    Permission.INTEGRATION_EVENTS: frozenset({_I}),
    Permission.INTEGRATION_INBOUND: frozenset({_I}),
    Permission.INTEGRATION_ENDPOINTS: frozenset({_A, _I}),
    Permission.SELF: frozenset(Role),
}

PRODUCTION_ROLES = frozenset({_O, _S, _Q})


def allowed(roles: set[str] | frozenset[str], permission: Permission) -> bool:
    """True if any of ``roles`` holds ``permission``."""
    granted = MATRIX[permission]
    return any(Role(r) in granted for r in roles if r in Role._value2member_map_)


def roles_for(permission: Permission) -> frozenset[Role]:
    return MATRIX[permission]


def check_role_combination(roles: set[str]) -> None:
    """Refuse an admin account that also holds a production role."""
    unknown = roles - set(Role._value2member_map_)
    if unknown:
        raise ValueError(f"unknown role(s): {', '.join(sorted(unknown))}")
    if Role.ADMIN.value in roles and roles & {r.value for r in PRODUCTION_ROLES}:
        raise ValueError("an admin account cannot also hold a production role (operator, supervisor, qa)")
