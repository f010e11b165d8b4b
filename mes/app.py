"""The application factory."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask

import mes.models  # noqa: F401  (every model and signable record type)
from mes import observability, web
from mes.audit.log import AuditLog, install_guard
from mes.config import load_config
from mes.db import db, engine_options, ping_idle_connections, send_writes_with_commit, tune_sqlite_engine
from mes.validation import FORM_MAX


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the MES web app: settings from ``MES_*`` variables, overridden by ``config``."""
    app = Flask("mes", instance_path=None)
    app.config.update(load_config(overrides=config))
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config["SQLALCHEMY_DATABASE_URI"]))
    app.config.update(
        SESSION_COOKIE_NAME="mes_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(days=365),
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,  # JSON bodies: BODY_MAX, or more where a field's schema allows
        MAX_FORM_MEMORY_SIZE=FORM_MAX,  # forms: also refused by length up front (mes.web.check_form_size)
    )
    observability.configure_logging(app.config["MES_LOG_LEVEL"])

    db.init_app(app)
    with app.app_context():
        tune_sqlite_engine(db.engine)
        ping_idle_connections(db.engine)
        send_writes_with_commit(db.engine)
    install_guard()
    AuditLog().init_app(app)  # one per app: it caches the key and the last checkpoint
    observability.init_app(app)
    web.init_app(app)

    from mes.audit.blueprint import bp as audit_bp
    from mes.ebr.blueprint import bp as ebr_bp
    from mes.equipment.blueprint import bp as equipment_bp
    from mes.execution.blueprint import bp as execution_bp
    from mes.integration.blueprint import bp as integration_bp
    from mes.integration.blueprint import pages_bp as integration_pages_bp
    from mes.materials.blueprint import bp as materials_bp
    from mes.oee.blueprint import bp as oee_bp
    from mes.qa.blueprint import bp as qa_bp
    from mes.system.blueprint import bp as system_bp
    from mes.users.blueprint import bp as users_bp

    app.register_blueprint(system_bp)
    app.register_blueprint(users_bp)
    app.register_blueprint(audit_bp)
    app.register_blueprint(qa_bp)
    app.register_blueprint(materials_bp)
    app.register_blueprint(execution_bp)
    app.register_blueprint(equipment_bp)
    app.register_blueprint(oee_bp)
    app.register_blueprint(integration_bp)
    app.register_blueprint(ebr_bp)
    app.register_blueprint(integration_pages_bp)

    import kiosk  # the operator touch UI (/kiosk/) and its translations (Flask-Babel)

    kiosk.init_app(app)

    from mes import realtime
    from mes.gateway import blueprint as gateway_web

    realtime.init_app(app)  # Socket.IO namespace /live (Redis message queue with MES_REDIS_URL)
    gateway_web.init_app(app)  # /api/v1/devices (+ /api/v1/simulation with MES_SIMULATION)
    return app
