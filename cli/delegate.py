"""Mount a command that lives in another part (workers/, models/) without importing it up front.

The root CLI must stay cheap and torch-free whatever the owning module imports, so `xraysynth bench
pipeline …` is a thin pass-through: when it runs it imports the module and hands it the raw arguments
(`--help` included). The target may be a typer app (with `name` as one of its commands, or as its only
command), a click command, or a plain function that typer can turn into a command.
"""

from __future__ import annotations

import importlib

import typer

# Typer may ship its own copy of click, so commands are recognised by shape, not by click's classes.


def _is_command(obj) -> bool:
    return callable(getattr(obj, "main", None)) and hasattr(obj, "params")


def as_click(obj, name: str):
    """A click-style command (anything with .main) for a typer app, a command, or a plain function."""
    if isinstance(obj, typer.Typer):
        return typer.main.get_command(obj)
    if _is_command(obj):
        return obj
    if callable(obj):
        wrapper = typer.Typer(add_completion=False)
        wrapper.command(name=name)(obj)
        return typer.main.get_command(wrapper)
    raise TypeError(f"{obj!r} is not a command")


def resolve(module: str, candidates: list[str], name: str):
    """The command for `name`, from the first of `candidates` that `module` defines."""
    mod = importlib.import_module(module)
    for attr in candidates:
        obj = getattr(mod, attr, None)
        if obj is None:
            continue
        command = as_click(obj, name)
        subcommands = getattr(command, "commands", None)
        if isinstance(subcommands, dict):  # a group: take the named command from it
            if name in subcommands:
                return subcommands[name]
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
