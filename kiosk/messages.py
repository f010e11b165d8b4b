"""Refusals from the engine as plain sentences in the operator's language.

The service layer words its refusals in English for people (``MESError.detail``). The kiosk
shows them as they are to English-speaking operators; for other languages it recognises the
sentences operators meet every shift and translates them, and otherwise puts a translated
lead-in before the original sentence, so nothing the engine said is hidden.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask_babel import gettext as _

from kiosk import locale
from mes.errors import MESError

Pattern = tuple[re.Pattern[str], Callable[[dict[str, str]], str]]

PATTERNS: list[Pattern] = [
    (re.compile(r"The badge or PIN is wrong\."), lambda m: _("The badge or PIN is wrong.")),
    (re.compile(r"This account is locked.*"), lambda m: _("This account is locked after too many failed attempts; "
                                                          "ask an administrator to reset it.")),
    (re.compile(r"Badge log-in works only on a registered kiosk\."),
     lambda m: _("Badge log-in works only on a registered kiosk.")),
    (re.compile(r"The session timed out after inactivity; log in again\."),
     lambda m: _("The session timed out after inactivity; log in again.")),
    (re.compile(r"The session has ended; log in again\."), lambda m: _("The session has ended; log in again.")),
    (re.compile(r"Log in first\."), lambda m: _("Log in first.")),
    (re.compile(r"Lot (?P<lot>\S+) is on hold(?P<rest>.*)", re.S),
     lambda m: _("Lot %(lot)s is on hold and must not be used. Put it aside and tell QA.", lot=m["lot"])),
    (re.compile(r"Lot (?P<lot>\S+) is not known to the MES\..*", re.S),
     lambda m: _("Lot %(lot)s is not known to the MES. Check the label and scan again.", lot=m["lot"])),
    (re.compile(r"Step (?P<step>\S+) is blocked by open (?P<sev>\w+) deviation (?P<dev>\S+) .*", re.S),
     lambda m: _("Step %(step)s is blocked by open deviation %(dev)s; QA must decide on it first.",
                 step=m["step"], dev=m["dev"])),
    (re.compile(r"Step (?P<step>\S+) changed \(version .*", re.S),
     lambda m: _("Step %(step)s was changed on another terminal; the screen now shows its current state.",
                 step=m["step"])),
    (re.compile(r".*net weight (?P<w>\S+ \S+) is outside the tolerance window (?P<lo>\S+) to (?P<hi>\S+ \S+).*",
                re.S),
     lambda m: _("The net weight %(w)s is outside the tolerance window %(lo)s to %(hi)s; nothing was recorded. "
                 "A deviation was raised.", w=m["w"], lo=m["lo"], hi=m["hi"])),
    (re.compile(r"The scale reading is not stable.*", re.S),
     lambda m: _("The scale reading is not stable; wait until the scale shows a stable weight.")),
    (re.compile(r"Second-person verification must be done by a different person.*", re.S),
     lambda m: _("Second-person verification must be done by a different person than the one who did the work.")),
    (re.compile(r"The signature was refused: wrong PIN\."), lambda m: _("The signature was refused: wrong PIN.")),
    (re.compile(r"Acknowledge that your electronic signature is binding.*", re.S),
     lambda m: _("Acknowledge that your electronic signature is binding before your first signature.")),
    (re.compile(r"That badge is not yours; sign with your own badge\."),
     lambda m: _("That badge is not yours; sign with your own badge.")),
    (re.compile(r"Only a person in an interactive session can sign.*", re.S),
     lambda m: _("Only a person in an interactive session can sign.")),
    (re.compile(r"Check the equipment label: it must show (?P<states>.+)\. Nothing was recorded\.", re.S),
     lambda m: _("Check the equipment label: it must show %(states)s. Nothing was recorded.",
                 states=", ".join(_state_name(s) for s in m["states"].split(", ")))),
    (re.compile(r"The scale moved after you confirmed: you confirmed (?P<shown>.+?), (?P<scale>.+) now shows "
                r"(?P<now>.+?)\. Nothing was recorded\..*", re.S),
     lambda m: _("The scale moved after you confirmed: you confirmed %(shown)s, %(scale)s now shows %(now)s. "
                 "Nothing was recorded. Check the weight and confirm again.",
                 shown=m["shown"], scale=m["scale"], now=m["now"])),
]


def _state_name(name: str) -> str:
    """A label state as the engine writes it for people, in the operator's language."""
    return {"clean": _("clean"), "calibrated": _("calibrated"), "qualified": _("qualified"),
            "not in use": _("not in use")}.get(name, name)

LEAD_IN = {
    "validation-failed": lambda: _("The entry is not valid."),
    "not-found": lambda: _("Not found."),
    "conflict": lambda: _("This cannot be done now."),
    "step-not-ready": lambda: _("The step cannot be done yet."),
    "step-blocked": lambda: _("The step is blocked."),
    "step-refused": lambda: _("The entry was refused; nothing was recorded."),
    "authentication-failed": lambda: _("Log-in failed."),
    "session-expired": lambda: _("The session has ended."),
    "forbidden": lambda: _("Not permitted."),
    "terminal-required": lambda: _("This needs a registered kiosk."),
    "rate-limited": lambda: _("Too many attempts; wait a minute."),
    "account-locked": lambda: _("The account is locked."),
}


def sentence(exc: MESError) -> str:
    """The refusal as one plain sentence in the operator's language."""
    if locale() == "en":
        return exc.detail
    for pattern, render in PATTERNS:
        match = pattern.fullmatch(exc.detail.strip())
        if match:
            return render(match.groupdict())
    lead = LEAD_IN.get(exc.slug)
    return f"{lead()} {exc.detail}" if lead else exc.detail
