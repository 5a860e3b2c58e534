"""Mount a command that lives in a heavy module (models/, workers/) without importing it up front.

The root CLI must not import torch, so `xraysynth ingest …` is a thin pass-through: the first time it
runs it imports the owning module and hands it the raw arguments (including `--help`). The target may
be a typer app (with `name` as one of its commands, or as its only command), a click command, or a
plain function that typer can turn into a command.
"""

from __future__ import annotations

import importlib

import click
import typer


def as_click(obj, name: str) -> click.Command:
    if isinstance(obj, click.Command):
        return obj
    if isinstance(obj, typer.Typer):
        return typer.main.get_command(obj)
    if callable(obj):
        wrapper = typer.Typer(add_completion=False)
        wrapper.command(name=name)(obj)
        return typer.main.get_command(wrapper)
    raise TypeError(f"{obj!r} is not a command")


def resolve(module: str, candidates: list[str], name: str) -> click.Command:
    """The click command for `name`, from the first of `candidates` that `module` defines."""
    mod = importlib.import_module(module)
    for attr in candidates:
        obj = getattr(mod, attr, None)
        if obj is None:
            continue
        command = as_click(obj, name)
        if isinstance(command, click.Group):
            if name in command.commands:
                return command.commands[name]
            continue  # a group without this command: try the next candidate
        return command
    raise LookupError(f"{module} defines none of {', '.join(candidates)} for `{name}`")


def delegate(module: str, candidates: list[str], name: str, args: list[str], *, prog_name: str) -> None:
    try:
        command = resolve(module, candidates, name)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):  # the module itself is missing, not one of its imports
            typer.secho(f"`{prog_name}` is not available in this installation ({module} is missing)", fg="red", err=True)
            raise typer.Exit(1) from None
        raise
    except LookupError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    command.main(args=list(args), prog_name=prog_name, standalone_mode=True)
