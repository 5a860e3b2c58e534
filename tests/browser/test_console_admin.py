"""Admin pages that need no worker: revoke with a reason, retry a failed generation, the audit log's
filters, paging and blind votes."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in
from tests.factories import make_dataset, make_model_version, put_release_object


@pytest.fixture
def model(clean):
    from service.db import session_scope

    with session_scope() as s:
        return make_model_version(s, conditions=("No Finding", "Mass"))


def _dataset(user, model, status: str):
    from service.db import session_scope

    with session_scope() as s:
        return make_dataset(s, account_id=user.id, model_version_id=model.id, status=status).id


def test_revoking_a_release_needs_a_reason_and_leaves_the_researcher_no_download(new_page, admin, researcher, model,
                                                                                 shots):
    from service import layout, storage
    from service.settings import get_settings

    ds = _dataset(researcher, model, "ready")
    put_release_object(layout.release_key(ds, layout.MANIFEST), b"index,file\n")
    page = new_page()
    sign_in(page, admin.key)
    page.goto(f"/ui/datasets/{ds}")
    page.click("form[action$='/revoke'] button")
    expect(page.locator("[data-error-for=reason]")).to_be_visible()
    page.fill("#revoke-reason", "ethics approval withdrawn")
    page.click("form[action$='/revoke'] button")
    expect(page.locator(".flash")).to_have_text("The release was revoked and its files deleted.")
    expect(page.locator(f"[data-status='{ds}']")).to_have_text("revoked")
    assert not storage.exists(get_settings().release_bucket, layout.release_key(ds, layout.MANIFEST))

    r = new_page()
    sign_in(r, researcher.key)
    r.goto(f"/ui/datasets/{ds}")
    expect(r.locator(f"[data-status='{ds}']")).to_have_text("revoked")
    assert r.locator("#download").count() == 0
    shot(r, shots, "researcher-dataset-revoked")


def test_an_admin_retries_a_failed_generation_from_the_datasets_page(new_page, admin, researcher, model, shots):
    ds = _dataset(researcher, model, "failed")
    page = new_page()
    sign_in(page, admin.key)
    page.goto("/ui/datasets?status=failed")
    shot(page, shots, "admin-datasets-failed")
    page.click(f"a[href='/ui/datasets/{ds}']")
    page.click("form[action$='/retry'] button")
    expect(page.locator(".flash")).to_have_text("Generation was restarted; finished shards are kept.")
    expect(page.locator(f"[data-status='{ds}']")).to_have_text("approved")


def test_the_audit_log_filters_pages_and_hides_another_admins_vote_until_you_cast_yours(
        new_page, admin, admin2, researcher, model, shots, monkeypatch):
    from service.accounts.models import Account
    from service.accounts.service import actor_of
    from service.audit.service import SYSTEM, record
    from service.db import session_scope
    from service.reviews import service as reviews
    from service.reviews.models import Decision
    from service.settings import get_settings

    monkeypatch.setenv("XRAYSYNTH_REVIEWS_REQUIRED", "2")  # one approval leaves it pending: votes stay blind
    get_settings.cache_clear()
    ds = _dataset(researcher, model, "pending_review")
    with session_scope() as s:
        for i in range(60):
            record(s, actor=SYSTEM, action="test.filler", target_type="test", target_id=i)
        other = s.get(Account, admin2.id)
        reviews.cast_vote(s, dataset_id=ds, reviewer=other, actor=actor_of(other), decision=Decision.approve,
                          reason="secret-reason-of-admin2")

    page = new_page()
    sign_in(page, admin.key)
    page.goto("/ui/audit")
    expect(page.locator("table.audit tbody tr")).to_have_count(50)
    shot(page, shots, "admin-audit")
    page.click("text=Older events")
    expect(page.locator("table.audit tbody tr").first).to_be_visible()
    assert re.search(r"before_id=\d+", page.url)

    page.goto("/ui/audit?action=review.cast")
    row = page.locator("table.audit tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("cast your own vote")
    assert "secret-reason-of-admin2" not in page.content()
    page.goto(f"/ui/datasets/{ds}")
    assert "secret-reason-of-admin2" not in page.content()  # the review page is blind too
    page.check("input[name=decision][value=approve]")
    page.fill("#reason", "agree")
    page.click("#review button[type=submit]")
    expect(page.locator("#review")).to_contain_text("secret-reason-of-admin2")
    get_settings.cache_clear()


def test_the_dataset_histogram_marks_the_threshold_and_says_reidentification_drops_lie_right_of_it(
        new_page, admin, researcher, model, shots):
    # Seen on a real 1,500-image run: rejected images plotted right of the quoted copy threshold (they
    # were the re-identification check's drops, scored in another space), with no threshold drawn.
    import json

    from tests.factories import put_private_object

    ds_id = _dataset(researcher, model, "pending_review")
    edges = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    evidence = {"threshold": 0.354, "bin_edges": edges, "dataset_counts": [0, 3, 40, 50, 7],
                "rejected_counts": [0, 6, 3, 0, 0], "n_generated": 109, "n_released": 100, "n_rejected": 9,
                "fraction_filtered": 9 / 109, "every_image_checked": True,
                "checks": {"copy": {"threshold": 0.354, "n_rejected": 2},
                           "reidentification": {"available": True, "threshold": 0.16, "n_rejected": 7}}}
    put_private_object(f"evidence/{ds_id}/evidence.json", json.dumps(evidence).encode(), "application/json")
    page = new_page()
    sign_in(page, admin.key)
    page.goto(f"/ui/datasets/{ds_id}")
    hist = page.locator("section.evidence svg.hist").first
    line = hist.locator("line[data-threshold]")
    expect(line).to_have_count(1)
    # 0.354 lies in the bin 0.2-0.4, 77 % of the way along it
    slot = 550 / 5
    assert float(line.get_attribute("x1")) == pytest.approx(5 + 1 * slot + slot * (0.354 - 0.2) / 0.2, abs=0.1)
    expect(page.locator("section.evidence .legend").first).to_contain_text("rejected (copy or re-identification check)")
    expect(page.locator("[data-reid-note]")).to_contain_text("7 of the rejected images were dropped by the "
                                                             "re-identification check")
    shot(page, shots, "dataset-histogram-threshold")


def test_setting_an_empty_quota_says_so_beside_the_accounts_field(new_page, admin, researcher, shots):
    # The box cleared and Set pressed answered 422 with its message under a key no field shows: the
    # page came back unchanged and silent.
    page = new_page()
    sign_in(page, admin.key)
    page.goto("/ui/accounts")
    row = page.locator(f"tr[data-account='{researcher.name}']")
    row.locator("input[name=image_quota]").fill("")
    with page.expect_response(lambda r: r.request.method == "POST") as resp:
        row.locator("button:has-text('Set')").click()
    assert resp.value.status == 422
    row = page.locator(f"tr[data-account='{researcher.name}']")
    expect(row.locator(".field-error")).to_have_text("enter the new quota: a whole number of images, 0 or more")
    shot(page, shots, "admin-accounts-empty-quota")


def test_the_review_page_says_the_requests_model_was_retired(new_page, admin, researcher, model, shots):
    from service.audit.service import SYSTEM
    from service.db import session_scope
    from service.modelversions import service as models_service

    ds_id = _dataset(researcher, model, "pending_review")
    with session_scope() as s:
        models_service.retire(s, model_id=model.id, actor=SYSTEM)
    page = new_page()
    sign_in(page, admin.key)
    page.goto(f"/ui/datasets/{ds_id}")
    expect(page.locator("[data-model-retired]")).to_contain_text("retired: this request cannot be approved; reject it")
    page.check("input[name=decision][value=approve]")
    page.fill("#reason", "looks fine")
    with page.expect_response(lambda r: r.request.method == "POST") as resp:
        page.click("form[action$='/reviews'] button[type=submit]")
    assert resp.value.status == 409
    expect(page.locator(".error-message")).to_contain_text("was retired, so this dataset cannot be approved")
    shot(page, shots, "review-retired-model")
