"""The admin and researcher journeys through the console, in a real browser, with a real worker
generating the dataset (toy model from tests/workers) and a file fetched through its signed link."""

from __future__ import annotations

import hashlib
import re

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in
from tests.factories import make_dataset, make_model_version

PURPOSE = "Pre-training a nodule detector before fine-tuning on our own labelled scans."


def _loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_a_researcher_requests_through_the_form_an_admin_approves_on_the_evidence_and_the_file_downloads_verified(
        new_page, researcher, admin, model_version, start_worker, shots):
    worker = start_worker()  # starts while the people click: torch takes a while to import

    page = new_page()
    sign_in(page, researcher.key)
    shot(page, shots, "01-researcher-home")
    page.goto("/ui/catalogue")
    expect(page.locator("article.model-card")).to_have_count(1)
    shot(page, shots, "02-researcher-catalogue")

    page.goto("/ui/requests/new")
    page.fill("[name='count.Atelectasis']", "-3")
    page.fill("[name='count.Mass']", "4")
    page.fill("#purpose", PURPOSE)
    page.fill("#seed", "777")
    with page.expect_response(lambda r: r.url.endswith("/ui/requests")) as resp:
        page.click("form[action='/ui/requests'] button[type=submit]")
    assert resp.value.status == 422
    expect(page.locator("[data-error-for='count.Atelectasis']")).to_contain_text("greater than 0")
    assert page.locator("#purpose").input_value() == PURPOSE  # nothing typed is lost
    shot(page, shots, "03-researcher-request-field-error")
    page.fill("[name='count.Atelectasis']", "4")
    page.click("form[action='/ui/requests'] button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/datasets/[0-9a-f-]{36}\?done=requested"))
    dataset_id = re.search(r"/ui/datasets/([0-9a-f-]{36})", page.url).group(1)
    expect(page.locator(f"[data-status='{dataset_id}']")).to_have_text("pending_review")
    shot(page, shots, "04-researcher-dataset-pending")

    admin_page = new_page()
    sign_in(admin_page, admin.key)
    shot(admin_page, shots, "05-admin-home")
    admin_page.goto("/ui/reviews")
    row = admin_page.locator(f"tr[data-dataset-row='{dataset_id}']")
    expect(row).to_contain_text(researcher.name)
    expect(row).to_contain_text("Atelectasis × 4")
    shot(admin_page, shots, "06-admin-review-queue")
    row.locator("text=Open evidence").click()
    admin_page.wait_for_url(f"**/ui/datasets/{dataset_id}")
    evidence = admin_page.locator("#evidence")
    expect(evidence).to_contain_text("same-patient images caught")
    expect(evidence).to_contain_text("Membership-inference")
    assert evidence.locator("svg.bars").count() >= 2
    admin_page.check("input[name=decision][value=approve]")
    admin_page.click("#review button[type=submit]")
    expect(admin_page.locator("[data-error-for=reason]")).to_be_visible()  # a reason is required
    shot(admin_page, shots, "07-admin-review-page")
    admin_page.fill("#reason", "Purpose fits the data-use agreement; calibration targets met.")
    admin_page.click("#review button[type=submit]")
    expect(admin_page.locator(".flash")).to_have_text("Your vote was recorded.")
    expect(admin_page.locator("#review")).to_contain_text(admin.name)

    page.goto(f"/ui/datasets/{dataset_id}")
    status = page.locator(f"[data-status='{dataset_id}']")
    try:  # the page's script polls and reloads when the dataset is done
        expect(status).to_have_text("ready", timeout=150_000)
    except AssertionError:
        raise AssertionError(f"dataset did not become ready:\n{worker.tail()}") from None
    expect(page.locator("#download")).to_be_visible()
    shot(page, shots, "08-researcher-dataset-ready")
    assert f"xraysynth download {dataset_id}" in page.locator("[data-command]").inner_text()
    names = page.locator("tr[data-file]").evaluate_all("rows => rows.map(r => r.dataset.file)")
    assert "manifest.csv" in names and "shards/shard-00000.tar" in names
    assert page.locator("tr[data-file] a[data-signed-link]").count() == len(names)
    shard = page.locator("tr[data-file='shards/shard-00000.tar']")
    url = shard.locator("a").get_attribute("href")
    body = httpx.get(url, timeout=30).content
    assert hashlib.sha256(body).hexdigest() == shard.locator("[data-sha256]").inner_text()
    assert len(body) == int(shard.locator("[data-size]").get_attribute("data-size"))
    assert _loaded(page, "img.preview")
    assert page.locator("a[href*='evidence'], img[src*='evidence']").count() == 0
    page.goto("/ui/datasets")
    expect(page.locator(f"[data-status='{dataset_id}']")).to_have_text("ready")
    shot(page, shots, "09-researcher-my-datasets")

    admin_page.goto(f"/ui/datasets/{dataset_id}")
    assert _loaded(admin_page, "img.pairs") and _loaded(admin_page, "img.preview")
    expect(admin_page.locator("[data-flags]").first).to_be_visible()
    shot(admin_page, shots, "10-admin-evidence-after-generation")
    admin_page.goto("/ui/datasets?status=ready")
    expect(admin_page.locator(f"[data-status='{dataset_id}']")).to_have_text("ready")
    shot(admin_page, shots, "11-admin-datasets")
    admin_page.goto(f"/ui/audit?target_id={dataset_id}")
    expect(admin_page.locator("table.audit")).to_contain_text("dataset.release")
    shot(admin_page, shots, "12-admin-audit")
    for p in (page, admin_page):
        assert p.console_errors == []


def test_an_admin_creates_an_account_whose_key_is_shown_once_and_signs_in(new_page, admin, shots):
    page = new_page()
    sign_in(page, admin.key)
    page.goto("/ui/accounts")
    page.fill("#name", "!")
    page.click("form[action='/ui/accounts'] button[type=submit]")
    expect(page.locator("[data-error-for=name]")).to_be_visible()
    page.fill("#name", "eve-lab")
    page.fill("#image_quota", "500")
    page.click("form[action='/ui/accounts'] button[type=submit]")
    key = page.locator("[data-new-key]").inner_text().strip()
    shot(page, shots, "admin-accounts-new-key")
    page.goto("/ui/accounts")
    assert page.locator("[data-new-key]").count() == 0 and key not in page.content()
    row = page.locator("tr[data-account='eve-lab']")
    row.locator("input[name=image_quota]").fill("700")
    row.locator("button:has-text('Set')").click()
    expect(page.locator(".flash")).to_have_text("The account was updated.")

    eve = new_page()
    sign_in(eve, key)
    expect(eve.locator("main")).to_contain_text("700 images of your quota remain")


def models_page_with(new_page, admin, *, status: str, version: str):
    """An admin on /ui/models with one more model version in `status`: (page, that version)."""
    from service.db import session_scope

    with session_scope() as s:
        mv = make_model_version(s, status=status, name="cxr-dcgan", version=version)
    page = new_page()
    sign_in(page, admin.key)
    page.goto("/ui/models")
    return page, mv


def test_an_admin_publishes_a_draft_model_and_retires_it(new_page, admin, clean, shots):
    page, draft = models_page_with(new_page, admin, status="draft", version="2.0")
    shot(page, shots, "admin-models")
    page.click(f"form[action='/ui/models/{draft.id}/publish'] button")
    expect(page.locator(".flash")).to_have_text("The model version is published.")
    page.check(f"form[action='/ui/models/{draft.id}/retire'] input[name=confirm]")
    page.click(f"form[action='/ui/models/{draft.id}/retire'] button")
    expect(page.locator(".flash")).to_have_text("The model version is retired.")
    page.goto("/ui/audit?action=model.")
    expect(page.locator("table.audit tbody tr")).to_have_count(2)


def test_a_researcher_cancels_a_pending_request_from_its_page(new_page, researcher, clean, shots):
    from service.db import session_scope

    with session_scope() as s:
        mv = make_model_version(s, conditions=("Mass",))
        ds = make_dataset(s, account_id=researcher.id, model_version_id=mv.id).id
    page = new_page()
    sign_in(page, researcher.key)
    page.goto(f"/ui/datasets/{ds}")
    page.fill("form[action$='/cancel'] input[name=reason]", "asked for the wrong condition")
    page.click("form[action$='/cancel'] button")
    expect(page.locator(".flash")).to_have_text("The request was cancelled.")
    expect(page.locator(f"[data-status='{ds}']")).to_have_text("cancelled")
    assert page.locator("form[action$='/cancel']").count() == 0
    shot(page, shots, "researcher-dataset-cancelled")


def test_without_javascript_the_catalogue_says_why_a_condition_is_not_offered_and_the_form_still_works(
        new_page, researcher, clean, shots):
    from service.db import session_scope

    with session_scope() as s:
        make_model_version(s, conditions=("Mass", "Hernia"), patients_per_condition={"Mass": 60, "Hernia": 7})
    page = new_page(javascript=False)
    sign_in(page, researcher.key)
    page.goto("/ui/catalogue")
    expect(page.locator("table.catalogue")).to_contain_text("Hernia: trained on 7 patients; policy requires at least 20")
    page.goto("/ui/requests/new")
    assert page.locator("[name='count.Hernia']").count() == 0  # not offered: no field to fill
    page.fill("[name='count.Mass']", "5")
    page.fill("#purpose", PURPOSE)
    page.click("form[action='/ui/requests'] button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/datasets/[0-9a-f-]{36}\?done=requested"))
    expect(page.locator("dd").first).to_contain_text("pending_review")
    shot(page, shots, "researcher-dataset-no-javascript")


def test_a_released_dataset_page_names_the_sources_to_cite_and_the_heatmaps_that_are_not_evidence(
        new_page, researcher, clean, shots):
    # The card obliges the researcher to cite the training-data sources, but the page showed only licence
    # names, and its heatmap warning lived only in the Markdown card and the preview's band labels.
    import json

    from service.audit.service import SYSTEM
    from service.datasets.models import DatasetStatus
    from service.datasets.transitions import transition
    from service.db import session_scope
    from tests.factories import put_release_object

    with session_scope() as s:
        mv = make_model_version(s, conditions=("Mass", "No Finding"))
        ds = make_dataset(s, account_id=researcher.id, model_version_id=mv.id, spec={"Mass": 2, "No Finding": 2})
        for target in (DatasetStatus.approved, DatasetStatus.generating, DatasetStatus.ready):
            transition(s, ds, target, actor=SYSTEM)
        ds.done_images, ds_id = 4, ds.id
    card = {"card_version": 1, "dataset_id": str(ds_id), "status": "ready",
            "training_data": {"licences": {"CC BY 4.0": 3},
                              "citations": {"nih": "Wang X et al. ChestX-ray8. IEEE CVPR 2017."}},
            "heatmap_faithfulness": {"uninformative_conditions": {"Mass": "the classifier finds no evidence"}},
            "obligations": ["Cite this dataset (How to cite) and the training-data sources (under Training data)."]}
    put_release_object(f"datasets/{ds_id}/dataset_card.json", json.dumps(card).encode())
    page = new_page()
    sign_in(page, researcher.key)
    page.goto(f"/ui/datasets/{ds_id}")
    expect(page.locator("[data-citation='nih']")).to_have_text("Wang X et al. ChestX-ray8. IEEE CVPR 2017.")
    expect(page.locator("[data-uninformative-heatmaps]")).to_contain_text(
        "Heatmaps are uninformative for Mass (the classifier finds no evidence)")
    shot(page, shots, "researcher-released-card-citations")



def test_with_no_generator_published_the_request_page_says_so_instead_of_an_empty_form(new_page, researcher, clean,
                                                                                       shots):
    # After the only model was retired the page showed an empty "Images per condition" box and a form
    # that could only be refused.
    page = new_page()
    sign_in(page, researcher.key)
    page.goto("/ui/requests/new")
    expect(page.locator("[data-nothing-offered]")).to_contain_text("no generator is published")
    assert page.locator("form[action='/ui/requests']").count() == 0
    shot(page, shots, "researcher-request-nothing-offered")


def test_dataset_lists_say_what_each_request_is_not_only_when_it_was_made(new_page, researcher, admin, clean, shots):
    # The researcher's start page listed datasets by time, status and progress only: two requests made
    # the same minute (a PNG set and a DICOM set) could not be told apart; no list gave the format.
    from service.datasets.models import ImageFormat
    from service.db import session_scope

    with session_scope() as s:
        mv = make_model_version(s, conditions=("Mass", "Nodule"))
        make_dataset(s, account_id=researcher.id, model_version_id=mv.id, spec={"Mass": 40})
        ds = make_dataset(s, account_id=researcher.id, model_version_id=mv.id, spec={"Nodule": 7})
        ds.format = ImageFormat.dicom
    page = new_page()
    sign_in(page, researcher.key)
    for path in ("/ui/", "/ui/datasets"):
        page.goto(path)
        expect(page.locator("main table")).to_contain_text("Mass × 40 (40 images, png)")
        expect(page.locator("main table")).to_contain_text("Nodule × 7 (7 images, dicom)")
    shot(page, shots, "researcher-home-lists-what")
    admin_page = new_page()
    sign_in(admin_page, admin.key)
    admin_page.goto("/ui/datasets")
    expect(admin_page.locator("main table")).to_contain_text("Nodule × 7 (7 images, dicom)")


def test_a_generating_datasets_page_shows_the_workers_note_as_it_changes(new_page, researcher, clean, shots):
    # Progress counts recorded shards; between them the worker's note says how far the shard in hand is,
    # and the page's live update showed the count and status but never the note.
    from sqlalchemy import update

    from service.audit.service import SYSTEM
    from service.datasets.models import Dataset, DatasetStatus
    from service.datasets.transitions import transition
    from service.db import session_scope

    with session_scope() as s:
        mv = make_model_version(s, conditions=("Mass",))
        ds = make_dataset(s, account_id=researcher.id, model_version_id=mv.id, spec={"Mass": 1500})
        for target in (DatasetStatus.approved, DatasetStatus.generating):
            transition(s, ds, target, actor=SYSTEM)
        ds_id = ds.id
    page = new_page()
    sign_in(page, researcher.key)
    page.goto(f"/ui/datasets/{ds_id}")
    expect(page.locator(f"[data-count='{ds_id}']")).to_have_text("0 / 1500")
    with session_scope() as s:
        s.execute(update(Dataset).where(Dataset.id == ds_id)
                  .values(progress_note="images 1-1000: 512 of 1000 generated"))
    expect(page.locator(f"[data-note='{ds_id}']")).to_have_text("images 1-1000: 512 of 1000 generated")
    shot(page, shots, "researcher-dataset-shard-note")
    page.goto("/ui/datasets")  # the lists carry it too
    expect(page.locator(f"[data-note='{ds_id}']")).to_have_text("images 1-1000: 512 of 1000 generated")


def test_retiring_a_model_needs_the_box_ticked_and_nothing_changes_without_it(new_page, admin, clean, shots):
    from service.db import session_scope
    from service.modelversions.models import ModelVersion

    page, mv = models_page_with(new_page, admin, status="published", version="3.0")
    form = f"form[action='/ui/models/{mv.id}/retire']"
    # the browser refuses an unticked box; a client that skips that check meets the server's own
    page.eval_on_selector(f"{form} input[name=confirm]", "el => el.removeAttribute('required')")
    with page.expect_response(lambda r: r.request.method == "POST") as resp:
        page.click(f"{form} button")
    assert resp.value.status == 422
    expect(page.locator(f"{form} .field-error")).to_contain_text("tick the box to confirm")
    shot(page, shots, "retire-needs-confirmation")
    with session_scope() as s:
        assert s.get(ModelVersion, mv.id).status.value == "published"
