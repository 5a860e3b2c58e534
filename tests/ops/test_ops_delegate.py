"""Pass-through commands (`xraysynth bench pipeline`) reach the owning module lazily, help included,
and say plainly when that module is not installed."""

from __future__ import annotations

import sys
import types

import pytest
import typer
from typer.testing import CliRunner

from cli import app
from cli.delegate import delegate

runner = CliRunner()


def test_bench_pipeline_help_comes_from_the_bench():
    r = runner.invoke(app, ["bench", "pipeline", "--help"], prog_name="xraysynth", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "xraysynth bench pipeline" in r.output and "--n-images" in r.output


def test_missing_module_is_a_clean_error():
    with pytest.raises(typer.Exit) as exc:
        delegate("workers.no_such_module", ["app"], "x", [], prog_name="xraysynth x")
    assert exc.value.exit_code == 1


def test_plain_function_and_group_targets(monkeypatch, capsys):
    mod = types.ModuleType("fake_target")
    seen = {}

    def run_thing(count: int = 1) -> None:
        seen["count"] = count

    group = typer.Typer()
    group.command("other")(lambda: None)
    group.command("thing")(run_thing)
    mod.group_app, mod.run_thing = group, run_thing
    monkeypatch.setitem(sys.modules, "fake_target", mod)

    for candidates in (["group_app"], ["missing", "run_thing"]):
        seen.clear()
        with pytest.raises(SystemExit) as exc:
            delegate("fake_target", candidates, "thing", ["--count", "3"], prog_name="xraysynth thing")
        assert exc.value.code == 0 and seen == {"count": 3}
