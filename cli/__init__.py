"""`xraysynth` — one CLI for the three kinds of user. Heavy imports (torch, uvicorn, celery worker)
happen inside the commands that need them, so `xraysynth --help` and the API stay torch-free."""

from __future__ import annotations

import typer

from cli import hospital, ops, researcher

app = typer.Typer(
    name="xraysynth",
    help="Synthetic chest X-ray datasets: run the service, manage keys and models, request and download.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
ops.register(app)
hospital.register(app)
researcher.register(app)

if __name__ == "__main__":
    app()
