"""The OpenAPI description states what the server enforces (issue 18, last finding): the rules
``test_system.py`` does not check yet: ``expected_version`` and its 409, the terminal header on
every terminal-bound operation, date and time bounds, and the id pattern of every path id."""

from __future__ import annotations

from flask import Flask

from mes.web import YEARS, access_of


def test_openapi_documents_expected_version_the_terminal_header_and_date_bounds(client, app: Flask) -> None:
    doc = client.get("/api/v1/openapi.json").get_json()
    rules = " ".join(doc["info"]["description"].split())
    assert "`expected_version`" in rules and "409" in rules
    assert f"between the years {YEARS[0]} and {YEARS[1]}" in rules
    for step_action in ("start", "complete"):
        op = doc["paths"][f"/api/v1/batches/{{batch_id}}/steps/{{step_id}}/{step_action}"]["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        assert "expected_version" in body["required"] and body["properties"]["expected_version"]["minimum"] == 1
        headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
        assert headers["Idempotency-Key"]["required"] is True
        assert "expected_version" in headers["Idempotency-Key"]["description"]
    bound = 0
    for rule in app.url_map.iter_rules():
        access = access_of(app.view_functions[rule.endpoint])
        if not rule.rule.startswith("/api/") or access is None or not access.terminal_required:
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", f"{{{name}}}").replace(f"<int:{name}>", f"{{{name}}}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            op = doc["paths"][path][method.lower()]
            assert "X-MES-Terminal" in {p["name"] for p in op["parameters"] if p["in"] == "header"}, (method, path)
            for p in op["parameters"]:
                if p["in"] == "path":
                    assert "pattern" in p["schema"] or p["schema"].get("format") == "int64", (method, path, p)
            bound += 1
    assert bound >= 10
