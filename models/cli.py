"""Hospital-side commands: ingest, train gan|classifier, evaluate.

cli/hospital.py mounts them under `xraysynth`; ``python -m models.cli …`` runs them without the rest.
Heavy imports (torch) happen inside the commands so mounting them keeps `xraysynth --help` torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .privacy.check import privacy_app

train_app = typer.Typer(help="Train the conditional DCGAN or the condition classifier.", no_args_is_help=True)


def ingest_command(
    source_dir: Annotated[Path, typer.Argument(help="folder the CSV's paths are relative to", exists=True, file_okay=False)],
    labels: Annotated[Path, typer.Option("--labels", help="CSV: path, conditions (|-joined), patient_id[, split, image_id, source, view, license]", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="training set folder to write (hospital zone)")],
    default_license: Annotated[str, typer.Option(help="licence for rows whose CSV has none")] = "hospital-internal, not for redistribution",
) -> None:
    """Read DICOM (CR/DX) and PNG/JPEG chest radiographs + labels into a training set."""
    # torch: loaded when the command runs, so mounting these keeps `xraysynth --help` torch-free
    from .ingest import IngestError, ingest

    try:
        report = ingest(source_dir, labels, out, default_license=default_license)
    except IngestError as e:
        typer.echo(f"ingest refused: {e}", err=True)
        raise typer.Exit(code=2) from None
    if report.n_ingested == 0:
        raise typer.Exit(code=1)


@train_app.command("classifier")
def train_classifier_command(
    trainset: Annotated[Path, typer.Option(help="folder written by ingest", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/classifier"),
    epochs: float = 8.0,
    width: int = 32,
    batch_size: int = 64,
    lr: float = 1e-3,
    balance: Annotated[str, typer.Option(help="none | sqrt | full")] = "sqrt",
    seed: int = 0,
    device: str = "auto",
    threads: int = 2,
) -> None:
    """Multi-label condition classifier (heatmaps, probabilities, evaluation features)."""
    # torch: loaded when the command runs, so mounting these keeps `xraysynth --help` torch-free
    from .train import ClassifierConfig, train_classifier

    train_classifier(ClassifierConfig(trainset=str(trainset), out=str(out), epochs=epochs, width=width,
                                      batch_size=batch_size, lr=lr, balance=balance, seed=seed, device=device,
                                      threads=threads))


SHIPPED_BUNDLE = Path(__file__).resolve().parent / "checkpoints" / "default" / "bundle.pt"


def resolve_resume(resume: Path | None, out: Path | None) -> tuple[Path, str | None]:
    """``--resume`` -> (run folder, bundle to start from when that folder holds no checkpoint).

    A run folder with ckpt.pt continues exactly; a bundle (file, or a folder holding bundle.pt and no
    ckpt.pt) starts from its G and D; a run folder that is gone starts from the shipped default's.
    """
    if resume is None:
        return out or Path("runs/gan"), None
    if resume.is_file():
        return out or Path("runs/gan"), str(resume)
    if (resume / "ckpt.pt").exists():
        return out or resume, None
    if (resume / "bundle.pt").exists():
        return out or resume, str(resume / "bundle.pt")
    return out or resume, str(SHIPPED_BUNDLE)


@train_app.command("gan")
def train_gan_command(
    trainset: Annotated[Path, typer.Option(help="folder written by ingest", exists=True, file_okay=False)],
    out: Annotated[Path | None, typer.Option(help="run folder: ckpt.pt (resumable), history.json, bundle.pt "
                                                    "[default: the --resume folder, else runs/gan]")] = None,
    resume: Annotated[Path | None, typer.Option(help="a run folder to continue (its ckpt.pt), or a bundle whose "
                                                        "G and D start the run; a run folder that is gone "
                                                        "starts from the shipped default")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="ignore OUT/ckpt.pt and start over")] = False,
    classifier: Annotated[Path | None, typer.Option(help="classifier.pt or a bundle: val monitoring and the "
                                                            "bundle's classifier")] = None,
    iters: Annotated[int, typer.Option(help="total steps (a resumed run continues to this)")] = 20000,
    minutes: Annotated[float | None, typer.Option(help="wall-clock budget for this invocation")] = None,
    batch_size: int = 64,
    ngf: int = 32,
    ndf: int = 32,
    lr_g: float = 2e-4,
    lr_d: float = 8e-4,
    d_norm: Annotated[str, typer.Option(help="discriminator normalisation: sn | gn | none")] = "sn",
    augment: Annotated[str, typer.Option(help="DiffAugment policy: any of translation,cutout,color")] = "translation",
    lecam: Annotated[float, typer.Option(help="LeCam regularisation weight (0: off; 0.3 typical)")] = 0.0,
    r1: Annotated[float, typer.Option(help="R1 penalty gamma on real images (0: off; 0.1 typical)")] = 0.0,
    log_every: int = 0,
    balance: Annotated[str, typer.Option(help="none | sqrt | full")] = "sqrt",
    shift: int = 8,
    eval_every: int = 500,
    ckpt_minutes: Annotated[float, typer.Option(help="checkpoint at least this often")] = 3.0,
    seed: int = 0,
    dp: Annotated[bool, typer.Option("--dp", help="differentially private discriminator (Opacus)")] = False,
    epsilon: float = 10.0,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    dp_epochs: float = 5.0,
    device: str = "auto",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast on CUDA")] = True,
    threads: int = 2,
) -> None:
    """Conditional DCGAN at 128 px (hinge, projection D, sqrt class balance, EMA); --dp for DP-SGD on D."""
    # torch: loaded when the command runs, so mounting these keeps `xraysynth --help` torch-free
    from .train import GanConfig, train_gan

    run_dir, init_from = resolve_resume(resume, out)
    train_gan(GanConfig(trainset=str(trainset), out=str(run_dir), classifier=str(classifier) if classifier else None,
                        iters=iters, minutes=minutes, batch_size=batch_size, ngf=ngf, ndf=ndf, lr_g=lr_g,
                        lr_d=lr_d, d_norm=d_norm, augment=augment, lecam=lecam, r1=r1, log_every=log_every,
                        balance=balance, shift=shift, eval_every=eval_every, ckpt_minutes=ckpt_minutes, seed=seed,
                        resume=not fresh, init_from=init_from, dp=dp, epsilon=epsilon, delta=delta,
                        max_grad_norm=max_grad_norm, dp_epochs=dp_epochs, device=device, bf16=bf16,
                        threads=threads))


def evaluate_command(
    model: Annotated[Path, typer.Argument(help="bundle.pt to evaluate", exists=True, dir_okay=False)],
    trainset: Annotated[Path, typer.Option(help="folder written by ingest (test split is scored)", exists=True, file_okay=False)],
    out: Annotated[Path | None, typer.Option(help="write the bundle with its card's metrics here (default: in place)")] = None,
    card_json: Annotated[Path | None, typer.Option(help="also write the card as JSON here")] = None,
    quick: Annotated[bool, typer.Option(help="skip the classifier-training experiments (TSTR, augmentation)")] = False,
    eval_epochs: Annotated[float, typer.Option(help="epochs for the classifiers TSTR/augmentation train")] = 6.0,
    membership: Annotated[bool, typer.Option(help="run the membership-inference attacks (skip when the "
                                                  "privacy report already put them in the card)")] = True,
    seed: int = 0,
    device: str = "auto",
    threads: int = 2,
) -> None:
    """Score a bundle on the test split and write the metrics section of its model card."""
    # torch: loaded when the command runs, so mounting these keeps `xraysynth --help` torch-free
    from .evaluate import EvalConfig, evaluate_bundle

    evaluate_bundle(EvalConfig(model=str(model), trainset=str(trainset), out=str(out) if out else None,
                               card_json=str(card_json) if card_json else None, quick=quick,
                               eval_epochs=eval_epochs, membership=membership, seed=seed, device=device,
                               threads=threads))


def preview_command(
    model: Annotated[Path, typer.Argument(help="bundle.pt", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("runs/grid.png"),
    per_condition: int = 6,
    heatmaps: bool = True,
    seed: int = 0,
) -> None:
    """A grid of generated images per condition, with their Grad-CAM heatmaps underneath."""
    # torch: loaded when the command runs, so mounting these keeps `xraysynth --help` torch-free
    from .bundle import load_bundle
    from .preview import save_preview

    out.parent.mkdir(parents=True, exist_ok=True)
    save_preview(load_bundle(model), out, per_condition=per_condition, heatmaps=heatmaps, seed=seed)
    typer.echo(str(out))


app = typer.Typer(help="xraysynth hospital-side ML commands (models/)", no_args_is_help=True)
app.command("ingest")(ingest_command)
app.add_typer(train_app, name="train")
app.command("evaluate")(evaluate_command)
app.command("preview")(preview_command)
app.add_typer(privacy_app, name="privacy")

if __name__ == "__main__":
    app()
