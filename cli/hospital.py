"""Hospital commands: `ingest`, `train`, `evaluate`, `preview` (models/cli.py's app) and `models`
(register, publish, retire, list, bootstrap-default).

models/cli.py imports torch only inside its commands, so mounting it is cheap; where models/ is not
installed at all (the API image) those commands are simply absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from cli.common import cli_actor, settings_or_exit
from service import layout, storage
from service.audit.service import record
from service.db import session_scope
from service.errors import ApiError
from service.modelversions import service as mv_service
from service.modelversions.models import ModelStatus, ModelVersion
from service.modelversions.rows import model_version_row
from service.modelversions.service import list_models, publish_blockers, resolve_model, retire
from service.settings import get_settings

console = Console()
err_console = Console(stderr=True)

DEFAULT_MODEL_NAME = "cxr-dcgan"
DEFAULT_MODEL_VERSION = "default"

models_app = typer.Typer(help="Generator versions: register, publish, retire, list; bootstrap the shipped one.",
                         no_args_is_help=True)


class CommandError(RuntimeError):
    """A refusal to show the user as one line (the commands exit 1; `run` prints it and goes on)."""


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]{message}[/]")
    return typer.Exit(1)


def _resolve(session, ref: str):

    mv = resolve_model(session, ref=ref)
    if mv is None:
        raise CommandError(f"no model version {ref!r} (give its id or name:version)")
    return mv


@models_app.command("list")
def models_list(
    include_all: Annotated[bool, typer.Option("--all", help="Include drafts and retired versions.")] = False,
) -> None:
    """Model versions, newest first, with what stands between a draft and publication."""

    settings_or_exit()
    statuses = list(ModelStatus) if include_all else [ModelStatus.published]
    table = Table()
    table.add_column("model", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for name in ("conditions", "DP ε", "privacy index", "published", "blockers"):
        table.add_column(name)
    table.add_column("id", overflow="fold", min_width=8)
    with session_scope() as session:
        for mv in list_models(session, statuses=statuses):
            table.add_row(
                f"{mv.name}:{mv.version}", mv.status.value, str(len(mv.conditions or [])),
                f"{mv.dp_epsilon:g}" if mv.dp_epsilon is not None else "—",
                "yes" if mv.privacy_index_key else "[yellow]no[/]",
                f"{mv.published_at:%Y-%m-%d %H:%M}" if mv.published_at else "",
                "; ".join(publish_blockers(mv)) if mv.status == ModelStatus.draft else "", str(mv.id),
            )
    console.print(table)


@models_app.command("register")
def models_register(
    bundle: Annotated[Path, typer.Argument(help="bundle.pt written by training", exists=True, dir_okay=False)],
    trainset: Annotated[Path, typer.Option(help="the training set it was trained on (folder written by ingest)",
                                           exists=True, file_okay=False)],
    version: Annotated[str, typer.Option(help="Version label, unique per name.")],
    name: Annotated[str, typer.Option(help="Model name.")] = DEFAULT_MODEL_NAME,
    publish: Annotated[bool, typer.Option("--publish", help="Publish straight after registering.")] = False,
) -> None:
    """Upload a checkpoint, build and calibrate its privacy index, and record a draft version."""
    # lazy: the API image has no models/ or workers/, and `xraysynth --help` stays torch-free
    from models.trainset import load_trainset

    settings_or_exit()
    try:
        mv_id = _register(bundle.read_bytes(), name=name, version=version, trainset=load_trainset(trainset))
        console.print(f"[green]registered[/] {name}:{version} as draft ({mv_id})")
        if publish:
            _publish(str(mv_id), note="published at registration (CLI)")
    except CommandError as exc:
        raise _fail(str(exc)) from None


@models_app.command("publish")
def models_publish(
    ref: Annotated[str, typer.Argument(help="id or name:version")],
    note: Annotated[Optional[str], typer.Option(help="Reason, kept in the audit log.")] = None,
) -> None:
    """draft → published: researchers can request datasets from it (needs its privacy index)."""
    settings_or_exit()
    try:
        _publish(ref, note=note)
    except CommandError as exc:
        raise _fail(str(exc)) from None


@models_app.command("retire")
def models_retire(
    ref: Annotated[str, typer.Argument(help="id or name:version")],
    note: Annotated[Optional[str], typer.Option(help="Reason, kept in the audit log.")] = None,
) -> None:
    """published → retired: no new requests; existing datasets keep their provenance."""

    settings_or_exit()
    try:
        with session_scope() as session:
            mv = retire(session, model_id=_resolve(session, ref).id, actor=cli_actor(), note=note)
            label = f"{mv.name}:{mv.version}"
    except (ApiError, CommandError) as exc:
        raise _fail(getattr(exc, "message", str(exc))) from None
    console.print(f"[green]retired[/] {label}")


SHIPPED_MAX_BYTES = 30 * 1024 * 1024  # the repository carries the default checkpoint: keep it small


@models_app.command("package")
def models_package(
    bundle: Annotated[Path, typer.Argument(help="Evaluated bundle.pt (fp16 weights and card).", exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option(help="Model name in the card.")] = DEFAULT_MODEL_NAME,
    version: Annotated[str, typer.Option(help="Model version in the card.")] = DEFAULT_MODEL_VERSION,
    out: Annotated[Optional[Path], typer.Option(help="Folder to write bundle.pt + card.json into "
                                                     "(default: the shipped default, models/checkpoints/default).")] = None,
) -> None:
    """Write a bundle as the checkpoint `make run` ships: name and version in its card, card.json beside it."""
    # lazy: the API image has no models/ or workers/, and `xraysynth --help` stays torch-free
    from models.bundle import load_bundle
    from models.registry import bundle_checkpoint, write_bundle

    b = load_bundle(bundle)
    b.card = card = {**b.card, "name": name, "version": version}
    if not (card.get("metrics") or {}).get("frechet"):
        raise _fail(f"{bundle} has no evaluation metrics: run `xraysynth evaluate` first")
    data, _ = bundle_checkpoint(b)
    if len(data) > SHIPPED_MAX_BYTES:
        raise _fail(f"the checkpoint is {len(data) / 2**20:.1f} MiB; a shipped one must stay under "
                    f"{SHIPPED_MAX_BYTES / 2**20:.0f} MiB")
    target = out or default_checkpoint_dir()
    write_bundle(target / "bundle.pt", b, card_beside=True)
    console.print(f"[green]packaged[/] {name}:{version} → {target} ({len(data) / 2**20:.1f} MiB)")


@models_app.command("bootstrap-default")
def models_bootstrap_default() -> None:
    """Register and publish the shipped default generator if no model is published yet."""
    settings_or_exit()
    try:
        console.print(bootstrap_default_model(console))
    except CommandError as exc:
        raise _fail(str(exc)) from None


def _register(bundle_bytes: bytes, *, name: str, version: str, trainset) -> object:
    # lazy: the API image has no models/ or workers/, and `xraysynth --help` stays torch-free
    from workers.registration import register_model_version

    with console.status(f"registering {name}:{version}: uploading, building and calibrating the privacy index…"):
        try:
            with session_scope() as session:
                mv = register_model_version(session, bundle_bytes=bundle_bytes, name=name, version=version,
                                            trainset=trainset, actor=cli_actor())
                return mv.id
        except ValueError as exc:
            raise CommandError(f"cannot register {name}:{version}: {exc}") from None


def _publish(ref: str, *, note: str | None) -> None:
    try:
        with session_scope() as session:
            mv = mv_service.publish(session, model_id=_resolve(session, ref).id, actor=cli_actor(), note=note)
            label = f"{mv.name}:{mv.version}"
    except ApiError as exc:
        raise CommandError(f"cannot publish {ref}: {exc.message}") from None
    console.print(f"[green]published[/] {label}")


# ------------------------------------------------------------------------------- default model bootstrap


def default_checkpoint_dir() -> Path:
    # models/ is installed beside cli/ (one distribution). Located by path, not `import models`,
    # so a package of the same name elsewhere on sys.path (tests/models under pytest) cannot hide it.
    return Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "default"


def _ensure_trainset(console: Console, settings) -> tuple[object | None, str | None]:
    """The training set for the default model's privacy index: the one already in settings.trainset_dir,
    or ingested there from the hospital data in settings.shared_data_dir. (None, why) if neither exists."""
    # lazy: the API image has no models/ or workers/, and `xraysynth --help` stays torch-free
    from models.trainset import load_trainset

    target = Path(settings.trainset_dir)
    if (target / "trainset.json").exists():
        return load_trainset(target), None
    source = Path(settings.shared_data_dir)
    labels = source / "labels.csv"
    if not labels.exists():
        return None, (f"no training data: neither {target}/trainset.json nor {labels} exists "
                      "(set XRAYSYNTH_SHARED_DATA_DIR or XRAYSYNTH_TRAINSET_DIR)")
    # lazy: the API image has no models/ or workers/, and `xraysynth --help` stays torch-free
    from models.ingest import ingest

    console.print(f"ingesting the hospital data in {source} into {target} (for the privacy index)…")
    report = ingest(source, labels, target, console=console)
    if report.n_ingested == 0:
        return None, f"no usable images in {source}"
    return load_trainset(target), None


def _register_draft_without_index(session, *, bundle_bytes: bytes, card: dict, name: str, version: str, why: str):
    """Record the shipped model as a draft when its privacy index cannot be built here: an admin sees
    it (and why) in `models list --all`; the publish rules refuse it until it is re-registered with data."""
    sha = storage.put_bytes(get_settings().private_bucket, layout.checkpoint_key(name, version), bundle_bytes)
    mv = model_version_row(card=card, sha256=sha, name=name, version=version, size_bytes=len(bundle_bytes))
    session.add(mv)
    session.flush()
    record(session, actor=cli_actor(), action="model.register", target_type="model_version", target_id=mv.id,
           details={"name": name, "version": version, "privacy_index": None, "why": why})
    return mv


def bootstrap_default_model(console: Console) -> str:
    """Make the shipped generator (models/checkpoints/default) available if nothing is published.

    Returns a one-line summary for `xraysynth run`. Idempotent: a published model means nothing to do;
    a draft left without a privacy index (no data last time) is replaced once the data is reachable.
    """


    settings = get_settings()
    with session_scope() as session:
        rows = list_models(session, statuses=[ModelStatus.published])
        published = [(f"{m.name}:{m.version}", m.checkpoint_key) for m in rows]
    if published:
        # The database can outlive the object store (a local PostgreSQL kept while var/ was deleted):
        # a published model whose checkpoint is gone cannot generate, so say so plainly.
        lost = [label for label, key in published if not storage.exists(settings.private_bucket, key)]
        if lost:
            return (f"[yellow]published but missing from the S3 store: {', '.join(lost)} — the database kept "
                    "them while the store's data was removed; retire them (`xraysynth models retire`) or "
                    "start from an empty database[/]")
        return f"published: {', '.join(label for label, _ in published)}"

    ckpt_dir = default_checkpoint_dir()
    bundle_path, card_path = ckpt_dir / "bundle.pt", ckpt_dir / "card.json"
    if not bundle_path.exists():
        return f"[yellow]no published model, and no shipped default ({bundle_path} is missing): skipped[/]"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    name = str(card.get("name") or DEFAULT_MODEL_NAME)
    version = str(card.get("version") or DEFAULT_MODEL_VERSION)
    bundle_bytes = bundle_path.read_bytes()

    with session_scope() as session:
        existing = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
        if existing is not None and existing.status == ModelStatus.retired:
            return f"[yellow]{name}:{version} was retired by an admin; not re-publishing it[/]"
        if existing is not None and existing.privacy_index_key:
            existing_id = existing.id
        else:
            existing_id = None

    if existing_id is None:
        trainset, why = _ensure_trainset(console, settings)
        with session_scope() as session:
            stale = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
            if trainset is None:
                if stale is None:
                    _register_draft_without_index(session, bundle_bytes=bundle_bytes, card=card, name=name,
                                                  version=version, why=why)
                return f"[yellow]{name}:{version} is a draft, not published: {why}[/]"
            if stale is not None:  # the index-less draft of an earlier run: replace it now that data exists

                record(session, actor=cli_actor(), action="model.delete_draft", target_type="model_version",
                       target_id=stale.id, details={"name": name, "version": version,
                                                    "why": "replaced by a registration with a privacy index"})
                session.delete(stale)
                session.flush()
        existing_id = _register(bundle_bytes, name=name, version=version, trainset=trainset)

    _publish(str(existing_id), note="shipped default model (bootstrap)")
    return f"published: {name}:{version} (shipped default)"


def _mount_models_cli(app: typer.Typer) -> None:
    try:
        # lazy: the API image has no models/ or workers/, and `xraysynth --help` stays torch-free
        from models import cli as models_cli
    except ImportError:  # the API image has no models/ package: no hospital ML commands there
        return
    # Merged without a name: every command of models/cli.py (ingest, train, evaluate, preview, …)
    # becomes a top-level command, including ones added there later.
    app.add_typer(models_cli.app)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    _mount_models_cli(app)
    app.add_typer(models_app, name="models")
