"""Pass-through commands (`xraysynth bench pipeline`) reach the owning module lazily, help included,
and say plainly when that module is not installed."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_bench_pipeline_help_comes_from_the_bench():
    r = runner.invoke(app, ["bench", "pipeline", "--help"], prog_name="xraysynth", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "xraysynth bench pipeline" in r.output and "--n-images" in r.output


def test_missing_module_is_a_clean_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "workers.bench", None)  # as in an installation without workers/
    r = runner.invoke(app, ["bench", "pipeline"], prog_name="xraysynth")
    assert r.exit_code == 1
