"""The root CLI and the API process never import torch (the API image does not even have it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys
from cli import app
for argv in {argvs!r}:
    try:
        app(argv, prog_name="xraysynth")
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
heavy = sorted(m for m in ("torch", "opacus", "scipy", "pydicom") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _probe(argvs: list[list[str]]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.rsplit("HEAVY=", 1)[1].strip()


def test_importing_the_cli_does_not_import_torch():
    assert _probe([]) == ""


@pytest.mark.parametrize("argv", [
    ["--help"], ["run", "--help"], ["serve", "--help"], ["worker", "--help"], ["migrate", "--help"],
    ["keys", "--help"], ["keys", "create", "--help"], ["models", "--help"],
])
def test_help_does_not_import_torch(argv):
    assert _probe([argv]) == ""


def test_console_script_help_lists_the_commands():
    exe = [sys.executable, "-c", "from cli import app; app(prog_name='xraysynth')", "--help"]
    out = subprocess.run(exe, capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stderr
    for command in ("run", "serve", "worker", "migrate", "keys", "models", "ingest", "train", "evaluate", "bench"):
        assert f" {command} " in out.stdout, command


def test_api_app_does_not_import_torch():
    code = "import sys\nfrom service.app import create_app\ncreate_app()\nprint('torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYSYNTH_")}
    env["XRAYSYNTH_ENVIRONMENT"] = "development"  # defaults are fine: nothing is served
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
