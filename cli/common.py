"""What every command module shares: the audit actor of the command line, and settings loading that
turns a refused configuration into a readable exit."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.console import Console

from service.audit.service import Actor
from service.settings import Settings, get_settings

err_console = Console(stderr=True)


def cli_actor() -> Actor:
    """Changes made from the command line are audited as the `cli` system actor."""
    return Actor(id=None, name="cli", role="system")


def settings_or_exit() -> Settings:
    """Load settings, turning a refusal (default secrets outside development) into a readable exit."""
    try:
        return get_settings()
    except ValidationError as exc:
        messages = "; ".join(str(e.get("msg", e)).removeprefix("Value error, ") for e in exc.errors())
        err_console.print(f"[bold red]configuration refused:[/] {messages}")
        raise typer.Exit(2) from None
