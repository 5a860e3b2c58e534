"""The console's safety properties, in a real browser: escaping, CSRF, roles, the end of sessions,
failed sign-ins, security headers."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in
from tests.factories import make_dataset, make_model_version, put_private_object, row_counts

HOSTILE = 'Training a nodule detector <script>window.__pwned=1</script> "><img src=x onerror="window.__pwned=2">'


@pytest.fixture
def catalogue_model(clean):
    from service.db import session_scope

    with session_scope() as s:
        return make_model_version(s, conditions=("No Finding", "Mass", "Hernia"))


def _dataset_of(user, model, **kw):
    from service.db import session_scope

    with session_scope() as s:
        return make_dataset(s, account_id=user.id, model_version_id=model.id, **kw).id


def test_a_purpose_with_markup_renders_as_text_for_researcher_and_admin(new_page, researcher, admin, catalogue_model, shots):
    page = new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, researcher.key)
    page.goto("/ui/requests/new")
    page.fill("[name='count.Mass']", "3")
    page.fill("#purpose", HOSTILE)
    page.click("form[action='/ui/requests'] button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/datasets/[0-9a-f-]{36}\?done=requested"))
    assert page.locator("dd.purpose").inner_text() == HOSTILE
    shot(page, shots, "researcher-dataset-hostile-purpose")

    admin_page = new_page()
    sign_in(admin_page, admin.key)
    admin_page.goto("/ui/reviews")
    assert admin_page.locator("td.purpose").first.inner_text() == HOSTILE
    admin_page.click("text=Open evidence")
    assert admin_page.locator("dd.purpose").inner_text() == HOSTILE
    shot(admin_page, shots, "admin-review-hostile-purpose")

    for p in (page, admin_page):
        assert p.evaluate("window.__pwned") is None
        assert p.locator("img[src='x']").count() == 0
        assert p.locator("main script").count() == 0
    assert dialogs == []


def test_a_state_changing_post_without_the_csrf_token_is_refused_and_writes_nothing(new_page, researcher, admin,
                                                                                   catalogue_model, db):
    page = new_page()
    sign_in(page, researcher.key)
    before = row_counts(db)
    r = page.request.post("/ui/requests", form={"count.Mass": "2", "purpose": "a long enough purpose for review"})
    assert r.status == 403
    assert "security token" in r.text()
    r = page.request.post("/ui/requests", form={"count.Mass": "2", "purpose": "a long enough purpose for review",
                                                "csrf_token": "forged"})
    assert r.status == 403
    db.expire_all()
    assert row_counts(db) == before

    ds_id = _dataset_of(researcher, catalogue_model)
    admin_page = new_page()
    sign_in(admin_page, admin.key)
    r = admin_page.request.post(f"/ui/datasets/{ds_id}/reviews", form={"decision": "approve", "reason": "looks fine"})
    assert r.status == 403
    admin_page.goto(f"/ui/datasets/{ds_id}")
    assert admin_page.locator(f"[data-status='{ds_id}']").inner_text() == "pending_review"


def test_a_researcher_opening_admin_pages_gets_403_or_404_and_never_an_evidence_image(
        new_page, researcher, researcher_b, catalogue_model, shots):
    own = _dataset_of(researcher, catalogue_model, status="pending_review")
    others = _dataset_of(researcher_b, catalogue_model)
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64  # stands in for a real-image evidence file: it must never be served
    for ds in (own, others):
        put_private_object(f"evidence/{ds}/pairs.png", png, "image/png")
        put_private_object(f"evidence/{ds}/preview.png", png, "image/png")

    page = new_page()
    seen = []
    page.on("request", lambda req: seen.append(req.url))
    sign_in(page, researcher.key)
    for path in ("/ui/reviews", "/ui/accounts", "/ui/audit", "/ui/models"):
        resp = page.goto(path)
        assert resp.status == 403, path
    shot(page, shots, "researcher-forbidden")
    assert page.goto(f"/ui/datasets/{others}").status == 404
    for ds in (own, others):
        for name in ("pairs.png", "preview.png"):
            r = page.request.get(f"/ui/datasets/{ds}/evidence/{name}")
            assert r.status == 403
            assert r.body() != png
            r = page.request.get(f"/v1/datasets/{ds}/evidence/{name}")
            assert r.status in (401, 403)

    resp = page.goto(f"/ui/datasets/{own}")
    assert resp.status == 200
    assert page.locator("a[href*='evidence'], img[src*='evidence']").count() == 0
    page.goto("/ui/datasets")
    page.goto("/ui/catalogue")
    assert seen and not [u for u in seen if "evidence" in u]  # nothing the pages loaded was evidence


def test_after_the_key_is_revoked_the_session_stops_working_on_the_next_request(new_page, researcher, admin, shots):
    page = new_page()
    sign_in(page, researcher.key)
    assert page.goto("/ui/catalogue").status == 200

    admin_page = new_page()
    sign_in(admin_page, admin.key)
    admin_page.goto("/ui/accounts")
    row = admin_page.locator(f"tr[data-account='{researcher.name}']")
    row.locator("button[data-revoke]").click()
    admin_page.wait_for_url(re.compile(r"done=key_revoked"))
    shot(admin_page, shots, "admin-accounts-key-revoked")

    page.goto("/ui/catalogue")
    assert re.search(r"/ui/login$", page.url)
    r = page.request.get("/ui/api/datasets/00000000-0000-0000-0000-000000000000/progress")
    assert r.status == 401 and r.json()["error"]["code"] == "sign_in_required"  # JSON keeps the one error shape


def test_disabling_the_account_ends_its_session(new_page, researcher, admin):
    page = new_page()
    sign_in(page, researcher.key)
    admin_page = new_page()
    sign_in(admin_page, admin.key)
    admin_page.goto("/ui/accounts")
    admin_page.locator(f"tr[data-account='{researcher.name}'] button:has-text('Disable')").click()
    admin_page.wait_for_url(re.compile(r"done=updated"))
    page.goto("/ui/")
    assert re.search(r"/ui/login$", page.url)
    sign_in_attempt = page.goto("/ui/login")
    page.fill("#api_key", researcher.key)
    page.click("button[type=submit]")
    assert sign_in_attempt.ok and "disabled" in page.locator("[data-error-for=api_key]").inner_text()


def test_an_idle_session_expires(new_page, researcher, monkeypatch):
    from service.settings import get_settings

    monkeypatch.setenv("XRAYSYNTH_CONSOLE_IDLE_TIMEOUT_S", "1")
    get_settings.cache_clear()
    page = new_page()
    sign_in(page, researcher.key)
    time.sleep(1.5)
    page.goto("/ui/catalogue")
    assert re.search(r"/ui/login$", page.url)
    get_settings.cache_clear()


def test_failed_sign_ins_are_audited_and_rate_limited_and_signing_out_ends_the_session(new_page, researcher, db,
                                                                                     monkeypatch, shots):
    from sqlalchemy import select

    from service.audit.models import AuditEvent
    from service.settings import get_settings

    monkeypatch.setenv("XRAYSYNTH_CONSOLE_LOGIN_RATE_LIMIT", "3/minute")
    get_settings.cache_clear()
    page = new_page()
    for _ in range(3):
        page.goto("/ui/login")
        page.fill("#api_key", "xs_not-a-real-key")
        page.click("button[type=submit]")
        assert "not valid" in page.locator("[data-error-for=api_key]").inner_text()
    page.goto("/ui/login")
    page.fill("#api_key", researcher.key)  # even the right key waits once the address is over the limit
    with page.expect_response(lambda r: r.url.endswith("/ui/login") and r.request.method == "POST") as resp:
        page.click("button[type=submit]")
    assert resp.value.status == 429
    assert "too many failed sign-ins" in page.locator("[data-error-for=api_key]").inner_text()
    shot(page, shots, "login-rate-limited")
    events = list(db.scalars(select(AuditEvent).where(AuditEvent.action == "console.sign_in_failed")))
    assert len(events) == 3
    assert all("xs_not-a-real-key" not in str(e.details) for e in events)

    monkeypatch.setenv("XRAYSYNTH_CONSOLE_LOGIN_RATE_LIMIT", "100/minute")
    get_settings.cache_clear()
    sign_in(page, researcher.key)
    page.click("header button:has-text('Sign out')")
    page.wait_for_url(re.compile(r"/ui/login\?done=signed_out"))
    page.goto("/ui/")
    assert re.search(r"/ui/login$", page.url)
    get_settings.cache_clear()


def test_every_page_sends_a_csp_without_inline_script_and_refuses_framing(live_url, researcher, clean):
    with httpx.Client(base_url=live_url) as http:
        root = http.get("/", follow_redirects=False)
        assert root.status_code in (302, 303, 307) and root.headers["location"] == "/ui/"
        login = http.get("/ui/login")
        for r in (login, http.get("/ui/"), http.get("/ui/no-such-page"), http.get("/v1/health"),
                  http.get("/ui/static/console.css")):
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in login.text and "onclick" not in login.text
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
        assert http.get("/ui/no-such-page").status_code == 404


def test_a_form_field_with_a_nul_byte_is_refused_with_422_and_writes_nothing(new_page, researcher, catalogue_model, db):
    page = new_page()
    sign_in(page, researcher.key)
    page.goto("/ui/requests/new")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    before = row_counts(db)
    r = page.request.post("/ui/requests", form={"count.Mass": "2", "csrf_token": token,
                                                "purpose": "a long enough purpose \x00 for review"})
    assert r.status == 422
    assert "control characters" in r.text() and "U+0000" in r.text()
    db.expire_all()
    assert row_counts(db) == before
    # The same form without it is accepted: the refusal was the character, not the form.
    r = page.request.post("/ui/requests", form={"count.Mass": "2", "csrf_token": token,
                                                "purpose": "a long enough purpose for review"})
    assert r.ok, r.status


def test_an_audit_filter_with_a_nul_byte_is_a_422_page_not_a_server_error(new_page, admin):
    page = new_page()
    sign_in(page, admin.key)
    r = page.request.get("/ui/audit?action=a%00b")
    assert r.status == 422, r.status
    assert "Invalid input" in r.text()
    assert page.request.get("/ui/audit?action=dataset.request").ok


def test_a_form_over_the_body_limit_gets_a_console_page_not_the_apis_json(new_page, researcher, catalogue_model, db,
                                                                           shots):
    # A purpose pasted from a protocol document (over 64 KiB) showed the browser a raw JSON error body.
    page = new_page()
    sign_in(page, researcher.key)
    page.goto("/ui/requests/new")
    page.fill("[name='count.Mass']", "2")
    page.fill("#purpose", "A protocol pasted whole. " * 3000)
    before = row_counts(db)
    with page.expect_response(lambda r: r.url.endswith("/ui/requests")) as resp:
        page.click("form[action='/ui/requests'] button[type=submit]")
    assert resp.value.status == 413
    assert resp.value.headers["content-type"].startswith("text/html")
    expect(page.locator("h1")).to_have_text("Too large")
    expect(page.locator(".error-message")).to_contain_text("shorten the text")
    shot(page, shots, "form-over-the-body-limit")
    db.expire_all()
    assert row_counts(db) == before


def test_a_count_that_is_not_a_whole_number_gets_one_error_beside_its_field(new_page, researcher, catalogue_model,
                                                                             shots):
    # "1.5" also drew "ask for at least one image of one condition" at the top, though one was asked for.
    page = new_page()
    sign_in(page, researcher.key)
    page.goto("/ui/requests/new")
    page.fill("[name='count.Mass']", "1.5")
    page.fill("#purpose", "a long enough purpose for review")
    with page.expect_response(lambda r: r.url.endswith("/ui/requests")) as resp:
        page.click("form[action='/ui/requests'] button[type=submit]")
    assert resp.value.status == 422
    expect(page.locator("[data-error-for='count.Mass']")).to_have_text("enter a whole number of images")
    expect(page.locator(".field-error")).to_have_count(1)
    shot(page, shots, "count-not-a-whole-number")
