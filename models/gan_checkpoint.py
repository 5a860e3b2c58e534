"""The GAN run's resumable checkpoint (``RUN/ckpt.pt``) and warm starts from a shipped bundle.

A checkpoint holds everything a continued run needs to behave as if it had never stopped: G, D,
the EMA generator, both optimisers, the LeCam averages, the step, torch's global RNG (Opacus draws
its noise from it) and the best-on-val generator so far. Batches and latents of step t come from
(seed, t), so nothing else is needed for an identical continuation. Written through
``bundle.write_atomic``: a run killed mid-save keeps its previous checkpoint.

A bundle (the shipped default, or any packaged model) carries G and D but no optimiser state:
``warm_start`` copies its weights in and counts steps on from the bundle's own, so the continued
run draws batches the bundle's training never drew.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .bundle import load_bundle, write_atomic
from .gan_steps import GanState

# What makes a run that run: a continuation takes these from its checkpoint, not from the command.
RUN_FIELDS = ("nz", "ngf", "ndf", "emb_dim", "d_norm", "lr_g", "lr_d", "beta1", "beta2", "ema_decay", "balance",
              "shift", "augment", "lecam", "r1", "r1_every", "batch_size", "seed", "dp", "epsilon", "delta",
              "max_grad_norm", "dp_epochs")
ARCH_FIELDS = ("nz", "ngf", "ndf", "emb_dim", "d_norm")


def _plain(m):
    """Opacus wraps modules (``_module``) and optimisers (``original_optimizer``)."""
    return getattr(m, "_module", getattr(m, "original_optimizer", m))


def save_checkpoint(path: Path, st: GanState, *, config: dict, elapsed_s: float, history: list, best: dict,
                    accountant_state=None, sampler_rng: torch.Generator | None = None,
                    warm_start: dict | None = None) -> None:
    ck = {
        "step": st.step, "elapsed_s": elapsed_s, "config": json.dumps(config, default=str),
        "G": st.G.state_dict(), "D": _plain(st.D).state_dict(), "G_ema": st.G_ema.state_dict(),
        "optG": st.optG.state_dict(), "optD": _plain(st.optD).state_dict(),
        "lecam_ema": dict(st.lecam_ema), "rng_torch": torch.get_rng_state(),
        "history": json.dumps(history), "best_fd": best["fd"], "best_step": best["step"],
        "best_state": best["state"], "warm_start": json.dumps(warm_start),
    }
    if accountant_state is not None:
        ck["dp_accountant"] = accountant_state
    if sampler_rng is not None:  # Opacus' Poisson sampler
        ck["rng_dp_sampler"] = sampler_rng.get_state()
    buf = io.BytesIO()
    torch.save(ck, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def saved_config(ck: dict) -> dict:
    return json.loads(ck["config"])


def restore(st: GanState, ck: dict) -> dict:
    """Load a checkpoint into ``st`` (before Opacus wraps D); returns the run's bookkeeping."""
    st.G.load_state_dict(ck["G"])
    st.D.load_state_dict(ck["D"])
    st.G_ema.load_state_dict(ck["G_ema"])
    st.optG.load_state_dict(ck["optG"])
    st.optD.load_state_dict(ck["optD"])
    st.step = int(ck["step"])
    st.lecam_ema.update(ck.get("lecam_ema") or {})
    if "rng_torch" in ck:
        torch.set_rng_state(ck["rng_torch"])
    return {"elapsed_s": float(ck["elapsed_s"]), "history": json.loads(ck["history"]),
            "best": {"fd": ck["best_fd"], "step": ck["best_step"], "state": ck["best_state"]},
            "dp_accountant": ck.get("dp_accountant"), "sampler_rng": ck.get("rng_dp_sampler"),
            "warm_start": json.loads(ck.get("warm_start") or "null")}


def bundle_architecture(path) -> dict:
    """The architecture fields of a bundle, to build matching networks before ``warm_start``."""
    cfg = load_bundle(path).config
    return {k: cfg[k] for k in ARCH_FIELDS}


def warm_start(st: GanState, path) -> dict:
    """Copy a bundle's G (also as the EMA start) and D into ``st``; steps continue from the bundle's."""
    b = load_bundle(path)
    if b.discriminator is None:
        raise ValueError(f"{path} has no discriminator: a GAN cannot continue from it")
    for dst, src in ((st.G, b.generator), (st.G_ema, b.generator), (st.D, b.discriminator)):
        dst.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in src.state_dict().items()})
    st.step = int((b.card.get("training") or {}).get("steps") or 0)
    return {"from_bundle": str(path), "bundle_step": st.step, "bundle_name": b.card.get("name"),
            "bundle_version": b.card.get("version")}


def inherited_verifier(warm_start: dict | None, console=None) -> tuple[dict | None, dict | None]:
    """The warm-start bundle's re-identification verifier and its card figures, for the continued bundle.

    The verifier and its held-out figures depend on real patients only, not on the generator, so a
    continued generator keeps them; the check of the generator's own images must be measured again
    (``models.privacy.report --write-card``). A warm-start bundle that is no longer on disk gives none.
    """
    path = (warm_start or {}).get("from_bundle")
    if not path or not Path(path).exists():
        if path and console is not None:
            console.print(f"[yellow]warm-start bundle {path} is gone: the new bundle carries no verifier[/]")
        return None, None
    b = load_bundle(path)
    section = (b.card.get("privacy") or {}).get("reidentification")
    if b.verifier is None or not section:
        return b.verifier, None
    section = {**section, "filter_on_generated": {
        "not_measured": "inherited with the verifier from the warm-start bundle; run models.privacy.report "
                        "--write-card to check this generator's own images"}}
    section["targets_met"] = {**section.get("targets_met", {}), "generated_flagged": None}
    return b.verifier, section
