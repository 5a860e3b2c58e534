"""The researcher CLI (`xraysynth request`, `xraysynth download`) against the API on a real port: what it
does when the API says "not now" (rate limit) and how it prints the API's own words."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.factories import make_dataset
from tests.serving import api_in_thread


@pytest.fixture
def api_url(api):
    """The API in a thread of this process (the CLI speaks HTTP)."""
    with api_in_thread() as url:
        yield url


def cli(*args: str):
    from cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _exhaust(api, user, limit: int) -> None:
    codes = [api.get("/v1/datasets", headers=user.headers).status_code for _ in range(limit + 1)]
    assert codes[-1] == 429, codes


def test_download_wait_rides_out_the_rate_limit_and_prints_the_failure_verbatim(
        api, api_url, settings_env, researcher, model, db):
    # The key's limit is shared with the console and the researcher's other scripts: a 429 on a poll
    # made `download --wait` exit 1 although the answer said when to come back.
    settings_env(rate_limit="3/2 second")
    from service.audit.service import SYSTEM
    from service.datasets.models import DatasetStatus
    from service.datasets.transitions import transition

    ds = make_dataset(db, account_id=researcher.id, model_version_id=model.id)
    for target in (DatasetStatus.approved, DatasetStatus.generating):
        transition(db, ds, target, actor=SYSTEM)
    transition(db, ds, DatasetStatus.failed, actor=SYSTEM, reason="shard 0: [Errno 111] Connection refused [/red]")
    db.commit()

    _exhaust(api, researcher, 3)
    r = cli("download", str(ds.id), "--out", "/nonexistent-never-written", "--wait",
            "--api-url", api_url, "--api-key", researcher.key)
    assert r.exit_code == 1, r.output
    assert "waiting" in r.output  # it said it was waiting out the limit...
    # ...then reached the dataset and printed its reason as the API wrote it (brackets and all)
    assert "dataset is failed: shard 0: [Errno 111] Connection refused [/red]" in r.output


def test_request_refusals_keep_their_error_code_and_bracketed_text(api_url, researcher, model):
    r = cli("request", "-c", "[/red]=5", "--purpose", "a condition name with markup in it",
            "--api-url", api_url, "--api-key", researcher.key)
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "unknown condition '[/red]'" in text and "[unknown_condition]" in text


def test_request_is_sent_again_after_the_rate_limit_not_refused(api, api_url, settings_env, researcher, model):
    settings_env(rate_limit="3/2 second")
    _exhaust(api, researcher, 3)
    r = cli("request", "-c", "Mass=5", "--purpose", "sent while the key was briefly over its limit",
            "--api-url", api_url, "--api-key", researcher.key)
    assert r.exit_code == 0, r.output
    assert "requested" in r.output
