"""Deliberately broken device-driver plugin (see pyproject.toml)."""
