"""Kiosk pages under ``/kiosk/``: a thin shell over the service layer.

Every commit is a plain form POST carrying the step's expected version and an idempotency
key minted when the page was rendered, so a double tap or a resend records once; the
server refuses a commit that was not confirmed (``confirmed=1``, set by the confirm dialog)
and checks every value itself. Refusals come back as one plain sentence in ``#message``.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)
from flask_babel import gettext as _
from jinja2 import ChoiceLoader, FileSystemLoader

from kiosk import HERE, html_lang, locale, step_pages
from kiosk import views as v
from kiosk.messages import sentence
from kiosk.step_pages import KindTemplates, StepPage
from mes.db import db
from mes.errors import AuthenticationFailed, MESError, PasswordExpired, ValidationFailed
from mes.execution import operations as ex
from mes.execution.models import BatchStatus, DeviationStatus, StepState
from mes.gateway.store import reading_store
from mes.recipes import model as rm
from mes.signatures import operations as esig
from mes.steps import registry as step_kinds
from mes.users import operations as users
from mes.users.permissions import Permission as P
from mes.web import (
    checking_credentials,
    csrf_token,
    current_terminal,
    endpoint,
    establish_session,
    leave_session_cookie_alone,
    limit_login,
    principal,
    problem,
)

bp = Blueprint("kiosk", __name__, url_prefix="/kiosk", template_folder="templates")
# the kiosk's templates, then the partials plugin step kinds ship beside their code
bp.jinja_loader = ChoiceLoader([FileSystemLoader(str(HERE / "templates")), KindTemplates()])
STATIC = HERE / "static"


# ------------------------------------------------------------------ page plumbing


@bp.app_context_processor
def _kiosk_globals() -> dict[str, Any]:
    return {"html_lang": html_lang, "kiosk_locale": locale, "rt": v.recipe_text}


def _base(screen: str, **extra: Any) -> dict[str, Any]:
    """What every kiosk page needs: screen name, who and where, panel config, CSRF."""
    who = g.get("principal")
    terminal = (who.terminal if who is not None else None) or current_terminal()
    step = extra.get("step")
    batch = extra.get("batch")
    if step is not None and batch is not None and screen in ("step", "blocked"):
        refetch = url_for("kiosk.step", batch_id=batch.id, step_id=step.step_id)
    elif request.method == "GET":
        refetch = request.path
    else:
        refetch = url_for("kiosk.batch", batch_id=batch.id) if batch is not None else url_for("kiosk.home")
    return {"screen": screen, "user": who.user if who is not None else None, "refetch_url": refetch,
            "terminal": terminal.id if terminal is not None else _("not enrolled"),
            "panel": v.panel(), "idle_seconds": current_app.config["MES_KIOSK_IDLE_SECONDS"], "csrf": csrf_token(),
            "scanner": {k: current_app.config[f"MES_SCANNER_{k.upper()}"] for k in ("prefix", "suffix", "min_length")},
            "message": extra.pop("message", None), "notice": extra.pop("notice", None) or session.pop("kiosk_notice", None),
            "notice_warning": session.pop("kiosk_notice_warning", False), **extra}


def _page(template: str, screen: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"kiosk/{template}", **_base(screen, **context)), status


def _wants_html() -> bool:
    return bool(request.headers.get("HX-Request")) or request.accept_mimetypes.accept_html


@bp.errorhandler(MESError)
def _refusal(exc: MESError) -> Any:
    """A refusal: a plain sentence on a kiosk screen for browsers, problem+json for machines.

    A refusal of a step's own action (see :func:`_refusals_show_step`) shows that step again
    with the sentence. This is the one place a kiosk request's session is cleaned after a
    refusal: the services roll back what they wrote; what the request still holds (rows
    read, locks) is let go here, so the page is rendered from what is committed."""
    db.session.rollback()
    shown = g.pop("kiosk_step", None)
    if shown is not None:
        batch_id, line, step_id = shown
        _publish(batch_id, line, step_id)  # a refusal may have committed a deviation
        try:
            return _render_step(batch_id, step_id, exc.status, sentence(exc))
        except MESError as again:  # the step itself cannot be shown: say that instead
            exc = again
    if not _wants_html():  # kiosk.js asking (the signer's name): the sentence in the operator's language
        return problem(exc.status, exc.slug, exc.title, sentence(exc), **exc.extra)
    if exc.status == 401:
        g.pop("principal", None)
        # nobody was logged in: just the log-in; a session that ended: say why
        said = None if isinstance(exc, AuthenticationFailed) else sentence(exc)
        return _page("login.html", "login", 401, message=said, next=_next_target())
    return _page("error.html", "error", exc.status, message=sentence(exc))


def _next_target() -> str:
    """Where the next log-in goes back to: the page asked for, or the one an idle log-out
    left (its ``next``); only a kiosk page."""
    path = request.full_path.rstrip("?") if request.method == "GET" else request.form.get("next", "")
    return path if path.startswith("/kiosk/") and not path.startswith(("/kiosk/login", "/kiosk/logout")) else ""


def _refusals_show_step(batch_id: str, line: str | None, step_id: str) -> None:
    """From here on, a refusal of this request shows the step again with the sentence (see
    :func:`_refusal`)."""
    g.kiosk_step = (batch_id, line, step_id)


def _expected_version() -> int:
    try:
        return int(request.form.get("expected_version", ""))
    except ValueError:
        raise ValidationFailed(_("The page is out of date; it was reloaded."), field="expected_version") from None


def _notice(text: str, *, warning: bool = False) -> None:
    """The sentence the next page shows about what was just done: with a check mark, or as
    a warning when the system raised a deviation with it (ISA-101: never a ✓ for that)."""
    session["kiosk_notice"] = text
    session["kiosk_notice_warning"] = warning


def _publish(batch_id: str, line: str | None, step_id: str | None) -> None:
    from mes import realtime

    if line:
        realtime.publish("batch_changed", {"batch_id": batch_id, "line": line, "step_id": step_id},
                         realtime.line_room(line))


# ---------------------------------------------------------------- public bits


@bp.get("/")
@endpoint(public="the kiosk's start address sends people to the log-in or their lines", tags=("kiosk",))
def home() -> Any:
    """Start page."""
    return redirect(url_for("kiosk.choose_line") if session.get("sid") else url_for("kiosk.login"))


@bp.get("/static/<path:filename>")
@endpoint(public="stylesheets, scripts and their licences", tags=("kiosk",))
def static_file(filename: str) -> Response:
    """Kiosk stylesheets and scripts (vendored libraries included)."""
    response = send_from_directory(STATIC, filename, max_age=3600)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get("/panel.css")
@endpoint(public="the touch-target sizes of the configured panel, as CSS custom properties", tags=("kiosk",))
def panel_css() -> Response:
    """Target size and spacing from MES_PANEL_PPI / MES_PANEL_DPR (20 mm targets, 2 mm gaps)."""
    p = v.panel()
    body = (f":root {{ --target: {p['target']}px; --gap: {p['gap']}px; --panel-ppi: {p['ppi']}; "
            f"--panel-dpr: {p['dpr']}; }}\n")
    return Response(body, mimetype="text/css", headers={"Cache-Control": "no-cache"})


@bp.get("/ping")
@endpoint(public="the connection banner's heartbeat; says nothing but that the server answers", tags=("kiosk",))
def ping() -> Response:
    """Heartbeat for the connection banner (does not extend a session, never sets the cookie)."""
    leave_session_cookie_alone()
    return Response('{"ok":true}', mimetype="application/json")


@bp.route("/login", methods=["GET", "POST"])
@endpoint(public="the kiosk badge log-in", tags=("kiosk",))
def login() -> Any:
    """Badge (scanned or typed) and PIN log-in on a registered kiosk."""
    next_url = request.values.get("next", "")
    if request.method == "GET":
        notice = _("You were logged out after inactivity; nothing half-entered was recorded.") \
            if request.args.get("idle") else None
        return _page("login.html", "login", notice=notice, next=next_url)
    badge, pin = request.form.get("badge", "").strip(), request.form.get("pin", "").strip()
    if not badge or not pin:
        return _page("login.html", "login", 422, message=_("Scan your badge (or type its number) and enter your PIN."),
                     next=next_url, badge=badge)
    try:
        limit_login()
        row, secret = users.login_with_badge(badge, pin, current_terminal())
    except PasswordExpired as exc:
        if exc.extra.get("credential") != "pin":
            return _page("login.html", "login", exc.status, message=sentence(exc), next=next_url, badge=badge)
        session["kiosk_pin_badge"] = badge  # the right temporary PIN: on to setting one's own
        reset = users.get_user(str(exc.extra.get("user"))) if exc.extra.get("user") else None
        if reset is not None:  # the PIN screen speaks the badge's language too (rule 13)
            session["kiosk_lang"] = reset.language
        return redirect(url_for("kiosk.change_pin"))
    except MESError as exc:
        return _page("login.html", "login", exc.status, message=sentence(exc), next=next_url, badge=badge)
    establish_session(secret)
    session["kiosk_lang"] = row.user.language
    return redirect(next_url if next_url.startswith("/kiosk/") else url_for("kiosk.choose_line"))


@bp.route("/pin", methods=["GET", "POST"])
@endpoint(public="a PIN reset by an administrator is replaced before any session", tags=("kiosk",))
def change_pin() -> Any:
    """Set one's own PIN after an administrator's reset (reached from the log-in with the
    temporary PIN): the temporary PIN and the new one twice, through the same service as
    ``POST /api/v1/auth/pin``; then logged in with the new PIN."""
    badge = session.get("kiosk_pin_badge")
    if not badge:
        return redirect(url_for("kiosk.login"))
    if request.method == "GET":
        return _page("pin.html", "pin")
    old_pin, new_pin = request.form.get("old_pin", "").strip(), request.form.get("new_pin", "").strip()
    again = request.form.get("new_pin_again", "").strip()
    if not old_pin or not new_pin or not again:
        return _page("pin.html", "pin", 422, message=_("Enter the temporary PIN, then your new PIN twice."))
    if new_pin != again:
        return _page("pin.html", "pin", 422, message=_("The two new PINs differ: enter the same new PIN twice."))
    try:
        limit_login()
        users.change_pin(badge, old_pin, new_pin, current_terminal())
        row, secret = users.login_with_badge(badge, new_pin, current_terminal())
    except MESError as exc:
        return _page("pin.html", "pin", exc.status, message=sentence(exc))
    establish_session(secret)
    session["kiosk_lang"] = row.user.language
    return redirect(url_for("kiosk.choose_line"))


@bp.post("/logout")
@endpoint(P.SELF, tags=("kiosk",))
def logout() -> Any:
    """Log out (also sent by the idle countdown)."""
    who = principal()
    if who.session is not None:
        users.end_session(who.session, "idle_timeout" if request.form.get("reason") == "idle" else "logout")
    terminal = session.get("terminal")
    session.clear()
    if terminal:
        session["terminal"] = terminal
    if request.form.get("reason") != "idle":
        return redirect(url_for("kiosk.login"))
    # after an idle log-out the next log-in goes back to the screen left (its draft kept in the browser)
    return redirect(url_for("kiosk.login", idle=1, next=_next_target() or None))


# ---------------------------------------------------------------- lines, batches


@bp.get("/lines")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def choose_line() -> Any:
    """Choose the line to work on."""
    terminal = current_terminal()
    return _page("lines.html", "lines", lines=v.lines(terminal.line if terminal else None))


@bp.get("/lines/<line>")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def line_batches(line: str) -> Any:
    """Running batches and dispatched work orders of a line."""
    batches = v.running_batches(line)
    orders = [{"wo": wo, "product": v.recipe_product(wo), "key": uuid.uuid4().hex} for wo in v.dispatched_orders(line)]
    return _page("batches.html", "batches", line=line, batches=batches, orders=orders)


def _confirmed() -> None:
    if request.form.get("confirmed") != "1":
        raise ValidationFailed(_("Nothing was recorded: confirm the entry first."), field="confirmed")


@bp.post("/work-orders/<wo_id>/start")
@endpoint(P.BATCH_EXECUTE, terminal=True, tags=("kiosk",))
def start_batch(wo_id: str) -> Any:
    """Start the batch of a dispatched work order."""
    _confirmed()
    batch = ex.start_batch(principal().actor(P.BATCH_EXECUTE), wo_id)
    _publish(batch.id, batch.line, None)
    _notice(_("Batch %(batch)s started.", batch=batch.id))
    return redirect(url_for("kiosk.batch", batch_id=batch.id))


@bp.get("/batches/<batch_id>")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def batch(batch_id: str) -> Any:
    """The batch's next step (or its summary when every step is done)."""
    b = ex.get_batch(batch_id)
    step = v.current_step(ex.steps_of(b.id))
    if step is None or b.status != BatchStatus.IN_PROGRESS.value:
        return redirect(url_for("kiosk.summary", batch_id=b.id))
    return redirect(url_for("kiosk.step", batch_id=b.id, step_id=step.step_id))


@bp.get("/batches/<batch_id>/summary")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def summary(batch_id: str) -> Any:
    """Batch complete: what was recorded, open deviations."""
    b = ex.get_batch(batch_id)
    rows = ex.steps_of(b.id)
    return _page("complete.html", "complete", batch=b, product=v.product_name(b), rows=v.summary_rows(b),
                 deviations=ex.deviations_of(b.id), total=len(rows), position=len(rows))


# ----------------------------------------------------------------------- steps


def _step_context(batch_id: str, step_id: str) -> dict[str, Any]:
    b = ex.get_batch(batch_id)
    step = ex.get_step(batch_id, step_id)
    rows = ex.steps_of(b.id)
    spec = ex.control_recipe(b).step(step.step_id)
    ctx: dict[str, Any] = {"batch": b, "step": step, "spec": spec, "rows": rows, "total": len(rows),
                           "position": step.seq + 1, "product": v.product_name(b), "key": uuid.uuid4().hex,
                           "others": [r for r in rows if r.state in (StepState.READY.value, StepState.IN_PROGRESS.value)
                                      and r.id != step.id],
                           "dev_here": [d for d in ex.deviations_of(b.id) if d.status == DeviationStatus.OPEN.value
                                        and d.batch_step_id == step.id]}
    kind = step_kinds.kind_of(spec)
    ctx.update(step_template=kind.template, verify_form=kind.second_person(spec), start_action=False,
               sign_endpoint=None)
    ctx.update(kind.kiosk_context(spec, StepPage(b, step, request.args, principal().user)))
    return ctx


def _render_step(batch_id: str, step_id: str, status: int = 200, message: str | None = None) -> Any:
    ctx = _step_context(batch_id, step_id)
    b, step = ctx["batch"], ctx["step"]
    if b.status != BatchStatus.IN_PROGRESS.value or step.state == StepState.COMPLETED.value:
        if message:
            return _page("error.html", "error", status, message=message, back=url_for("kiosk.batch", batch_id=b.id),
                         **{k: ctx[k] for k in ("batch", "product", "total", "position")})
        return redirect(url_for("kiosk.batch", batch_id=b.id))
    dev = v.blocker(b, step)
    if step.state in (StepState.BLOCKED.value, StepState.PENDING.value) or dev is not None:
        return _page("blocked.html", "blocked", status, message=message, deviation=dev,
                     waiting=ex.open_predecessors(step, ctx["rows"]), **ctx)
    cannot = step_kinds.kind_of(ctx["spec"]).kiosk_blocked(ctx["spec"], ctx)
    if cannot is not None:
        return _page("blocked.html", "blocked", status, message=message, deviation=None, waiting=[], **cannot, **ctx)
    return _page("step.html", "step", status, message=message, refused=status >= 400, **ctx)


@bp.get("/batches/<batch_id>/steps/<step_id>")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def step(batch_id: str, step_id: str) -> Any:
    """One step, screen by kind: instruction, entry, weigh, scan, check, timer, calculation, signature."""
    return _render_step(batch_id, step_id)


def _payload(spec: rm.Step, form: Any) -> dict[str, Any]:
    """The engine payload for a step kind, from the form (values stay strings: the server checks them)."""
    return step_kinds.kind_of(spec).payload(spec, form)


@bp.post("/batches/<batch_id>/steps/<step_id>")
@endpoint(P.BATCH_EXECUTE, terminal=True, tags=("kiosk",))
def do_step(batch_id: str, step_id: str) -> Any:
    """Start or record a step (confirmed, idempotent, version-checked)."""
    b = ex.get_batch(batch_id)
    step_row = ex.get_step(batch_id, step_id)
    spec = ex.control_recipe(b).step(step_row.step_id)
    who = principal()
    _refusals_show_step(b.id, b.line, step_id)
    version = _expected_version()
    key = f"{who.user_id}:kiosk:{request.form.get('idempotency_key') or uuid.uuid4().hex}"
    if request.form.get("action") == "start":  # starts a timer: nothing is recorded but the start time
        ex.start_step(who.actor(P.BATCH_EXECUTE), batch_id, step_id, key, version)
        _publish(b.id, b.line, step_id)
        return redirect(url_for("kiosk.step", batch_id=batch_id, step_id=step_id))
    _confirmed()
    # every rule (the label confirmed, the signer's own badge, the acknowledgement) is the engine's
    result = ex.complete_step(who.actor(P.BATCH_EXECUTE), batch_id, step_id, _payload(spec, request.form), key,
                              version, session_row=lambda: who.session, readings=reading_store(current_app),
                              max_reading_age_ms=int(current_app.config.get("MES_CAPTURE_MAX_AGE_MS", 3000)),
                              max_failed_weighings=int(current_app.config.get("MES_WEIGH_MAX_FAILED_ATTEMPTS", 3)))
    _publish(b.id, b.line, step_id)
    _notice(_recorded_text(spec, result), warning=bool(result.get("deviations")))
    if result.get("state") == StepState.IN_PROGRESS.value:
        return redirect(url_for("kiosk.step", batch_id=batch_id, step_id=step_id))
    return redirect(url_for("kiosk.batch", batch_id=batch_id))


def _recorded_text(spec: rm.Step, result: dict[str, Any]) -> str:
    own = step_pages.notice(spec, result)  # the kind's own sentence (its partial's notice macro)
    if own:
        return own
    if result.get("deviations"):
        return _("Recorded, outside the limits: deviation %(dev)s was raised.", dev=", ".join(result["deviations"]))
    return _("Recorded: %(title)s.", title=spec.title)


@bp.post("/batches/<batch_id>/steps/<step_id>/verify")
@endpoint(P.BATCH_VERIFY, terminal=True, tags=("kiosk",))
def verify(batch_id: str, step_id: str) -> Any:
    """A signature gate signed by another person at this kiosk with their own badge and PIN:
    a second-person verification, or a gate whose role the signed-in person does not hold
    (QA signs a QA gate here)."""
    b = ex.get_batch(batch_id)
    ex.get_step(batch_id, step_id)
    terminal = current_terminal()
    _refusals_show_step(b.id, b.line, step_id)
    _confirmed()
    payload = {"badge": request.form.get("badge", "").strip(), "pin": request.form.get("pin", "").strip(),
               "esig_acknowledged": request.form.get("esig_ack") == "1"}
    if not payload["badge"] or not payload["pin"]:  # the signer logs in with them first
        raise ValidationFailed(_("The verifier scans their badge and enters their PIN."), field="badge")
    version = _expected_version()
    limit_login()
    signer_session, _secret = users.login_with_badge(payload["badge"], payload["pin"], terminal)
    try:
        signer = signer_session.user
        key = f"{signer.id}:kiosk:{request.form.get('idempotency_key') or uuid.uuid4().hex}"
        # the service picks the gate's role the signer holds and checks the signer as for any signature
        ex.sign_gate(signer_session, batch_id, step_id, payload, key, version,
                     terminal=terminal.id if terminal else None)
    finally:
        users.end_session(signer_session, "verification_done")
    _publish(b.id, b.line, step_id)
    _notice(_("Verified by %(name)s.", name=signer.full_name))
    return redirect(url_for("kiosk.batch", batch_id=batch_id))


@bp.post("/signer")
@endpoint(P.SELF, terminal=True, tags=("kiosk",))
def signer() -> Any:
    """Who signs with this badge and PIN, by name, for the confirm dialog before a signature
    (rule 5: the dialog names the signer, not "Badge 1001"). The PIN is checked, and a wrong
    one audited and counted, exactly as at log-in; the signature itself checks it again."""
    badge, pin = request.form.get("badge", "").strip(), request.form.get("pin", "").strip()
    if not badge or not pin:
        raise ValidationFailed(_("Scan your badge (or type its number) and enter your PIN."), field="badge")
    terminal = current_terminal()
    with checking_credentials():  # only a failed check counts toward the terminal's log-in rate
        if request.form.get("own") == "1":  # the signed-in person's own signature: their own badge
            esig.check_signer(principal().user, esig.Credentials(secret=pin, badge=badge), terminal.id if terminal else None)
        return {"name": users.check_badge(badge, pin, terminal).full_name}  # a refusal: problem+json (_refusal)


@bp.post("/batches/<batch_id>/steps/<step_id>/sign")
@endpoint(P.ESIG_SIGN, terminal=True, tags=("kiosk",))
def sign(batch_id: str, step_id: str) -> Any:
    """The signed-in person signs a signature gate in the role the recipe names (no
    ``batch.execute`` needed: QA signs a QA gate)."""
    b = ex.get_batch(batch_id)
    step_row = ex.get_step(batch_id, step_id)
    spec = ex.control_recipe(b).step(step_row.step_id)
    who = principal()
    _refusals_show_step(b.id, b.line, step_id)
    _confirmed()
    version = _expected_version()
    key = f"{who.user_id}:kiosk:{request.form.get('idempotency_key') or uuid.uuid4().hex}"
    result = ex.sign_gate(who.session, batch_id, step_id, _payload(spec, request.form), key, version,
                          terminal=who.terminal.id if who.terminal else None)
    _publish(b.id, b.line, step_id)
    _notice(_recorded_text(spec, result), warning=bool(result.get("deviations")))
    return redirect(url_for("kiosk.batch", batch_id=batch_id))


# ------------------------------------------------------------------ deviations


CATEGORIES = {
    "spill": lambda: _("Spill or loss of material"),
    "equipment": lambda: _("Equipment fault"),
    "material": lambda: _("Material damaged or wrong"),
    "other": lambda: _("Other"),
}


@bp.post("/batches/<batch_id>/deviations")
@endpoint(P.DEVIATION_RAISE, terminal=True, tags=("kiosk",))
def raise_deviation(batch_id: str) -> Any:
    """Raise a deviation on the current step (or the batch)."""
    b = ex.get_batch(batch_id)
    step_id = request.form.get("step") or None
    if step_id:
        ex.get_step(batch_id, step_id)  # a step that does not exist is not shown again
        _refusals_show_step(b.id, b.line, step_id)
    _confirmed()
    category = request.form.get("category", "")
    if category not in CATEGORIES:
        raise ValidationFailed(_("Choose what happened."), field="category")
    severity = request.form.get("severity", "")
    if severity not in ("major", "minor"):  # no default: whether it stops the batch is chosen
        raise ValidationFailed(_("Choose whether it stops the batch."), field="severity")
    description = request.form.get("description", "").strip() or CATEGORIES[category]()
    dev = ex.raise_deviation(principal().actor(P.DEVIATION_RAISE), batch_id, severity, category, description,
                             step_id=step_id)
    _publish(b.id, b.line, step_id)
    _notice(_("Deviation %(dev)s raised; QA has been told.", dev=dev.id))
    return redirect(url_for("kiosk.step", batch_id=batch_id, step_id=step_id) if step_id
                    else url_for("kiosk.batch", batch_id=batch_id))


# ---------------------------------------------------------------- lots (scan)


@bp.get("/lots/<path:label>")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def lot_status(label: str) -> Any:
    """A scanned lot or container label: the lot and whether it may be used here (a page fragment)."""
    lot = v.resolve_label(label, request.args.get("item") or None)
    return render_template("kiosk/_lot.html", lot=lot)


# ---------------------------------------------------------------------- board


@bp.get("/board/<line>")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def board(line: str) -> Any:
    """QA status board of a line: what runs, what is blocked, open deviations (live)."""
    return _page("board.html", "board", line=line, rows=v.board(line), dispositions=v.dispositions(),
                 can_dispose="qa" in principal().roles)


@bp.get("/board/<line>/rows")
@endpoint(P.BATCH_VIEW, tags=("kiosk",))
def board_rows(line: str) -> Any:
    """The board's table alone, refreshed live."""
    return render_template("kiosk/_board_rows.html", line=line, rows=v.board(line), dispositions=v.dispositions(),
                           can_dispose="qa" in principal().roles, csrf=csrf_token())


@bp.post("/deviations/<deviation_id>/disposition")
@endpoint(P.DEVIATION_DISPOSE, terminal=True, tags=("kiosk",))
def dispose(deviation_id: str) -> Any:
    """QA decides on a deviation from the board, with an e-signature (password)."""
    who = principal()
    dev = ex.get_deviation(deviation_id)
    b = ex.get_batch(dev.batch_id)
    _confirmed()
    session_row = esig.signing_session(who.session)
    disposition = request.form.get("disposition", "")  # the engine refuses one that is not a Disposition
    if not disposition:  # none is pre-selected: QA chooses one
        raise ValidationFailed(_("Choose a disposition."), field="disposition")
    # Part 11 §11.200(a)(1): the signer types both components for the first signature of a
    # session; the engine refuses a missing id then, and an id that is not the session's user
    creds = esig.Credentials(secret=request.form.get("password", ""),
                             user_id=request.form.get("user_id", "").strip() or None)
    ex.disposition_deviation(session_row, creds, deviation_id, disposition,
                             request.form.get("reason", "").strip() or disposition.replace("_", " "),
                             terminal=who.terminal.id if who.terminal else None)
    _publish(b.id, b.line, dev.batch_step_id.split(":", 1)[1] if dev.batch_step_id else None)
    _notice(_("Deviation %(dev)s closed (%(disposition)s).", dev=deviation_id, disposition=disposition))
    return redirect(url_for("kiosk.board", line=b.line or "-"))


from kiosk import oee_pages  # noqa: E402  (registers the OEE stop screens on bp)

__all__ = ["bp", "oee_pages"]
