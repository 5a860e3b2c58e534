"""Outside development the service refuses the well-known defaults, naming the variable to set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import DEV_API_KEY_PEPPER, DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, Settings

STRONG = {"api_key_pepper": "p" * 32, "s3_access_key_id": "ak-123456", "s3_secret_access_key": "sk-" + "s" * 30}


def make(**overrides) -> Settings:
    # Init arguments beat the environment, and no .env file: the result depends on this test only.
    return Settings(_env_file=None, **{**STRONG, **overrides})


@pytest.mark.parametrize("environment", ["test", "production"])
@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"api_key_pepper": DEV_API_KEY_PEPPER}, "XRAYSYNTH_API_KEY_PEPPER"),
        ({"api_key_pepper": "short"}, "XRAYSYNTH_API_KEY_PEPPER"),
        ({"s3_access_key_id": DEV_S3_ACCESS_KEY, "s3_secret_access_key": DEV_S3_SECRET_KEY}, "XRAYSYNTH_S3_ACCESS_KEY_ID"),
        ({"s3_secret_access_key": DEV_S3_SECRET_KEY}, "XRAYSYNTH_S3_SECRET_ACCESS_KEY"),
        ({"s3_access_key_id": ""}, "XRAYSYNTH_S3_ACCESS_KEY_ID"),
        ({"s3_secret_access_key": ""}, "XRAYSYNTH_S3_SECRET_ACCESS_KEY"),
        ({"s3_access_key_id": "", "s3_secret_access_key": ""}, "XRAYSYNTH_S3_SECRET_ACCESS_KEY"),
    ],
)
def test_defaults_refused_outside_development(environment, overrides, variable):
    with pytest.raises(ValidationError) as exc:
        make(environment=environment, **overrides)
    assert variable in str(exc.value)
    assert environment in str(exc.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(ValidationError) as exc:
        make(environment="production", api_key_pepper=DEV_API_KEY_PEPPER, s3_access_key_id="")
    assert "XRAYSYNTH_API_KEY_PEPPER" in str(exc.value) and "XRAYSYNTH_S3_ACCESS_KEY_ID" in str(exc.value)


def test_development_accepts_the_defaults():
    s = Settings(_env_file=None, environment="development", api_key_pepper=DEV_API_KEY_PEPPER,
                 s3_access_key_id=DEV_S3_ACCESS_KEY, s3_secret_access_key=DEV_S3_SECRET_KEY)
    assert s.is_development


@pytest.mark.parametrize("environment", ["test", "production"])
def test_strong_secrets_accepted_outside_development(environment):
    assert make(environment=environment).environment == environment


def test_the_cli_reports_a_refusal_instead_of_a_traceback(tmp_path):
    import subprocess
    import sys

    env = {"XRAYSYNTH_ENVIRONMENT": "production", "XRAYSYNTH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "PATH": "", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", "from cli import app; app(prog_name='xraysynth')", "migrate"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert "configuration refused" in out.stderr and "XRAYSYNTH_API_KEY_PEPPER" in out.stderr
    assert "Traceback" not in out.stderr
