"""The operator's touch UI (``/kiosk/``): server-rendered pages for gloved hands, with a
little JavaScript for the keypad, the scanner, live weights, banners and idle logout.

:func:`init_app` registers the blueprint and Flask-Babel (English and Simplified Chinese;
the operator's language follows the badge). The kiosk is a thin shell over the service
functions in ``mes.<feature>.operations``; ``mes`` never imports this package.
"""

from __future__ import annotations

from pathlib import Path

import flask_babel
from flask import Flask, g, session
from flask_babel import Babel

HERE = Path(__file__).resolve().parent
LANGUAGES = ("en", "zh_Hans")


def locale() -> str:
    """The operator's language: the logged-in user's, else the one chosen at the last badge log-in."""
    who = g.get("principal")
    lang = getattr(getattr(who, "user", None), "language", None) or g.get("kiosk_lang") or session.get("kiosk_lang")
    return lang if lang in LANGUAGES else "en"


def html_lang() -> str:
    """The BCP 47 tag for the ``lang`` attribute (zh_Hans -> zh-Hans)."""
    return locale().replace("_", "-")


def init_app(app: Flask) -> None:
    """Register the kiosk pages and the translations."""
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", str(HERE / "translations"))
    app.config.setdefault("BABEL_DEFAULT_LOCALE", "en")
    Babel(app, locale_selector=locale)

    @app.before_request
    def _fresh_locale() -> None:
        # Flask-Babel caches the locale in the app context, which may outlive a request
        # (tests, CLI); each request chooses again from its own log-in.
        flask_babel.refresh()

    from kiosk.blueprint import bp

    app.register_blueprint(bp)
