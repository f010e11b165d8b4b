"""WSGI entry point for gunicorn: ``mes.wsgi:app``."""

from mes import create_app

app = create_app()
