"""The README stays true to the code: its set-up commands come first and every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_two_setup_commands_up_front():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    assert README.index("make run") < README.index("## Two zones")


def test_every_setting_is_in_the_table():
    for name in Settings.model_fields:
        assert f"`XRAYSYNTH_{name.upper()}`" in README, name


def test_every_cli_command_is_in_the_readme():
    import typer

    from cli import app

    names = set(typer.main.get_command(app).commands)
    assert {"run", "serve", "worker", "migrate", "keys", "models"} <= names
    for name in names:
        assert f"xraysynth {name}" in README, name
