"""Imports every model module so ``Base.metadata`` is complete (Alembic, tests)."""

from mes.audit import models as audit_models  # noqa: F401
from mes.audit import review as audit_review  # noqa: F401,E402  (registers the signable record)
from mes.ebr import models as ebr_models  # noqa: F401
from mes.equipment import models as equipment_models  # noqa: F401
from mes.execution import models as execution_models  # noqa: F401,E402  (and its signable records)
from mes.integration import inbound_models as integration_inbound_models  # noqa: F401
from mes.integration import models as integration_models  # noqa: F401
from mes.materials import models as materials_models  # noqa: F401
from mes.oee import models as oee_models  # noqa: F401
from mes.users import models as users_models  # noqa: F401
