"""generating → ready, once the last shard is recorded: manifest, dataset card, preview grid, and the
admin's privacy evidence (private bucket), then `ready` through the transition table.

Refuses to release unless the memorisation filter provably ran on every image: every provenance row
has its nearest-training-image score, the rows are exactly the indices 0..N-1, and the model version
has a privacy index. Numpy, Pillow and the database only; the synthetic pixels for the preview and
the evidence come from the per-shard fragments, so finalising needs no GPU and no torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select

from service.accounts.models import Account
from service import layout
from service.audit.service import SYSTEM
from service.datasets.models import Dataset, DatasetStatus, Shard, ShardStatus, SyntheticImage
from service.datasets.transitions import transition
from service.db import session_scope
from service.modelversions.models import ModelVersion
from service.reviews.models import Review
from service.settings import get_settings
from service.timeutil import utcnow
from workers import cleanup, leases, retry, state

log = logging.getLogger("xraysynth.worker.finalise")

PREVIEW_COLUMNS = 8
TILE = 128
PAIRS_K = 8


class NotReleasable(Exception):
    """A check before release failed; the message is the dataset's failure reason."""


# -- entry point ------------------------------------------------------------------------------

def finalise_dataset(dataset_id: uuid.UUID) -> str:
    job = leases.finalise_job(dataset_id)
    leases.clear_queued(job)
    with leases.Lease(job) as lease:
        if not lease.held:
            return "finalised by another worker"
        if state.status_of(dataset_id) != DatasetStatus.generating:
            cleanup.discard_outputs(dataset_id)
            return "not generating"
        try:
            return _finalise(dataset_id)
        except NotReleasable as exc:
            state.fail(dataset_id, f"not released: {exc}")
            return "failed"
        except retry.StorageUnavailable as exc:
            state.fail(dataset_id, f"finalising: {exc}")
            return "failed"
        except Exception as exc:  # noqa: BLE001 — a reason on the dataset beats a silent stall
            log.exception("dataset %s: finalise failed", dataset_id)
            state.fail(dataset_id, f"finalising: {type(exc).__name__}: {str(exc)[:300]}")
            return "failed"


def _finalise(dataset_id: uuid.UUID) -> str:
    settings = get_settings()
    hooks = state.storage_hooks(dataset_id)
    with session_scope() as s:
        ds = s.get(Dataset, dataset_id)
        mv = s.get(ModelVersion, ds.model_version_id)
        shards = list(s.scalars(select(Shard).where(Shard.dataset_id == dataset_id).order_by(Shard.index)))
        reviews = [
            {"reviewer": name, "decision": r.decision.value, "at": r.created_at.isoformat()}
            for r, name in s.execute(
                select(Review, Account.name).join(Account, Account.id == Review.reviewer_id)
                .where(Review.dataset_id == dataset_id).order_by(Review.created_at)
            )
        ]
        s.expunge_all()
    if not mv.privacy_index_key or not mv.privacy_calibration:
        raise NotReleasable("the model version has no privacy index, so the memorisation filter could not run")
    not_done = [sh.index for sh in shards if sh.status != ShardStatus.done]
    if not shards or not_done:
        raise NotReleasable(f"shards not generated: {not_done[:20]}")

    blocks = layout.image_blocks(ds.spec, mv.conditions)
    with tempfile.TemporaryFile(prefix="xraysynth-manifest-") as manifest:
        table = write_manifest(dataset_id, ds, shards, manifest)
        manifest_size = manifest.tell()
        manifest_sha = retry.sha256_file(manifest)
        fragments = load_fragments(dataset_id, shards, hooks)
        evidence, pairs_png, filter_summary = build_evidence(ds, mv, table, fragments, blocks)
        preview_png = render_preview(blocks, fragments)
        card = build_card(ds, mv, shards, reviews, table, filter_summary, blocks,
                          manifest=(manifest_sha, manifest_size))
        card_json = (json.dumps(card, indent=2, sort_keys=False, default=str) + "\n").encode()
        card_md = render_card_md(card).encode()

        # Private first: nothing is released unless its evidence exists for the admins.
        retry.put_object(settings.private_bucket, layout.evidence_key(dataset_id, layout.EVIDENCE_JSON),
                         (json.dumps(evidence, indent=1, default=str) + "\n").encode(), "application/json", **hooks)
        retry.put_object(settings.private_bucket, layout.evidence_key(dataset_id, layout.EVIDENCE_PAIRS), pairs_png, "image/png", **hooks)
        retry.upload_fileobj(settings.release_bucket, layout.release_key(dataset_id, layout.MANIFEST), manifest,
                             "text/csv", manifest_sha, **hooks)
    retry.put_object(settings.release_bucket, layout.release_key(dataset_id, layout.PREVIEW), preview_png, "image/png", **hooks)
    retry.put_object(settings.release_bucket, layout.release_key(dataset_id, layout.CARD_JSON), card_json,
                     "application/json", **hooks)
    retry.put_object(settings.release_bucket, layout.release_key(dataset_id, layout.CARD_MD), card_md,
                     "text/markdown; charset=utf-8", **hooks)

    with session_scope() as s:
        ds = state.lock_dataset(s, dataset_id)
        if ds.status != DatasetStatus.generating:
            outcome = ds.status
        else:
            ds.privacy_summary = filter_summary
            ds.progress_note = None
            ds.done_images = ds.total_images
            transition(s, ds, DatasetStatus.ready, actor=SYSTEM,
                       details={"images": ds.total_images, "shards": len(shards),
                                "filtered": filter_summary["n_rejected"], "manifest_sha256": manifest_sha})
            outcome = DatasetStatus.ready
    if outcome == DatasetStatus.cancelled:
        cleanup.discard_outputs(dataset_id)
    log.info("dataset %s: %s", dataset_id, outcome.value)
    return outcome.value


# -- manifest and the release checks ----------------------------------------------------------

def write_manifest(dataset_id: uuid.UUID, ds: Dataset, shards: list[Shard], out) -> dict:
    """Stream the provenance rows (index order) into manifest.csv, checking each; return numpy columns."""
    total = ds.total_images
    width = layout.key_width(total)
    fmt = str(getattr(ds.format, "value", ds.format))
    shard_of = np.zeros(total, np.int64)
    for sh in shards:
        shard_of[sh.start : sh.stop] = sh.index
    nn = np.full(total, np.nan, np.float64)
    prob = np.full(total, np.nan, np.float64)
    cond = np.empty(total, dtype=object)
    attempts = np.zeros(total, np.int64)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    w = csv.writer(text, lineterminator="\n")
    w.writerow(layout.MANIFEST_COLUMNS)
    expected, unchecked = 0, 0
    cols = (SyntheticImage.index, SyntheticImage.condition, SyntheticImage.seed, SyntheticImage.attempt,
            SyntheticImage.sha256, SyntheticImage.probability, SyntheticImage.nn_distance)
    with session_scope() as s:
        rows = s.execute(select(*cols).where(SyntheticImage.dataset_id == dataset_id)
                         .order_by(SyntheticImage.index).execution_options(yield_per=20_000))
        for index, condition, seed, attempt, sha, p, d in rows:
            if index != expected:
                raise NotReleasable(f"provenance rows are not the indices 0..{total - 1} (found {index} where "
                                    f"{expected} was expected)")
            expected += 1
            if d is None:
                unchecked += 1
            key = layout.sample_key(index, width)
            w.writerow([index, layout.shard_name(int(shard_of[index])), layout.image_file(key, fmt), condition, seed,
                        attempt, sha, layout.heatmap_file(key) if ds.heatmaps else "", "" if p is None else f"{p:.6f}"])
            nn[index] = np.nan if d is None else d
            prob[index] = np.nan if p is None else p
            cond[index] = condition
            attempts[index] = attempt
    text.flush()
    text.detach()
    if expected != total:
        raise NotReleasable(f"{expected} provenance rows for {total} images")
    if unchecked:
        raise NotReleasable(f"{unchecked} images have no memorisation-filter score: the filter did not run on them")
    return {"nn": nn, "prob": prob, "condition": cond, "attempt": attempts}


def load_fragments(dataset_id: uuid.UUID, shards: list[Shard], hooks: dict) -> dict:
    bucket = get_settings().private_bucket
    parts = {k: [] for k in ("rejected_scores", "closest_index", "closest_attempt", "closest_score", "closest_row",
                             "closest_pixels", "preview_index", "preview_pixels", "preview_heatmaps")}
    n_generated = n_rejected = 0
    missing = []
    for sh in shards:
        key = layout.fragment_key(dataset_id, sh.index)
        if retry.head_object(bucket, key, **hooks) is None:
            missing.append(sh.index)
            continue
        with np.load(io.BytesIO(retry.get_object(bucket, key, **hooks)), allow_pickle=False) as z:
            for k in parts:
                parts[k].append(z[k])
            n_generated += int(z["n_generated"])
            n_rejected += int(z["n_rejected"])
    if missing:
        raise NotReleasable(f"the filter evidence of shards {missing[:20]} is missing; an admin retry regenerates them")
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    out["n_generated"], out["n_rejected"] = n_generated, n_rejected
    return out


# -- privacy evidence (private bucket) --------------------------------------------------------

def _real_images(mv: ModelVersion, index, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """The nearest training images, from the hospital's training set when this worker can read it and it
    is the one the model was trained on; otherwise the 32 px view the privacy index holds."""
    tdir = Path(get_settings().trainset_dir)
    train_rows = index.rows[np.clip(rows, 0, None)]
    try:
        info = json.loads((tdir / "trainset.json").read_text())
        if info.get("fingerprint") == mv.training_fingerprint:
            images = np.load(tdir / "images.npy", mmap_mode="r")
            return np.asarray(images[train_rows], dtype=np.uint8), "training set (128 px)"
    except (OSError, ValueError):
        pass
    f = index.pixels[np.clip(rows, 0, None)].reshape(-1, 32, 32)
    lo, hi = f.min(axis=(1, 2), keepdims=True), f.max(axis=(1, 2), keepdims=True)
    small = np.rint(255 * (f - lo) / np.maximum(hi - lo, 1e-6)).astype(np.uint8)
    return np.kron(small, np.ones((4, 4), np.uint8)), "privacy index view (32 px)"


def build_evidence(ds: Dataset, mv: ModelVersion, table: dict, frag: dict, blocks) -> tuple[dict, bytes, dict]:
    from models.privacy import Calibration, PrivacyIndex, evidence_payload, render_pairs_png

    settings = get_settings()
    calibration = Calibration.from_dict(mv.privacy_calibration)
    index_bytes = retry.get_object(settings.private_bucket, mv.privacy_index_key)
    index = PrivacyIndex.load(index_bytes)
    payload = evidence_payload(calibration, table["nn"], rejected_scores=frag["rejected_scores"],
                               n_rejected=frag["n_rejected"])
    order = np.argsort(frag["closest_score"], kind="stable")[:PAIRS_K]
    rows = frag["closest_row"][order].astype(np.int64)
    closest = [
        {
            "index": int(frag["closest_index"][j]),
            "attempt": int(frag["closest_attempt"][j]),
            "condition": str(table["condition"][int(frag["closest_index"][j])]),
            "score": float(frag["closest_score"][j]),
            "nearest_training_row": int(index.rows[r]) if r >= 0 else None,
            "nearest_image_id": str(index.image_ids[r]) if r >= 0 else None,
        }
        for j, r in zip(order, rows)
    ]
    real, real_source = _real_images(mv, index, rows)
    pairs_png = render_pairs_png(
        frag["closest_pixels"][order], real, frag["closest_score"][order],
        captions=[f"#{c['index']} score {c['score']:.3f} | train row {c['nearest_training_row']}" for c in closest],
    )
    payload.update({
        "dataset_id": str(ds.id),
        "model_version": {"id": str(mv.id), "name": mv.name, "version": mv.version},
        "every_image_checked": True,
        "closest_pairs": closest,
        "pairs_png": {"key": layout.evidence_key(ds.id, layout.EVIDENCE_PAIRS), "real_images": real_source, "k": len(closest)},
        "generated_at": utcnow().isoformat(),
    })
    summary = {
        "n_generated": int(frag["n_generated"]),
        "n_released": int(len(table["nn"])),
        "n_rejected": int(frag["n_rejected"]),
        "fraction_filtered": payload["fraction_filtered"],
        "threshold": float(calibration.threshold),
        "released_min_score": payload["released_min_score"],
        "images_regenerated": int((table["attempt"] > 0).sum()),
        "every_image_checked": True,
    }
    return payload, pairs_png, summary


# -- preview grid -----------------------------------------------------------------------------

def _jet(x: np.ndarray) -> np.ndarray:
    """[..] in [0,1] -> RGB float in [0,1] (the familiar jet map, no matplotlib needed)."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    return np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def heatmap_overlay(pixels: np.ndarray, heatmap_u8: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grayscale image + low-res heatmap -> RGB uint8 overlay (previews only; the release stores 32x32)."""
    from PIL import Image

    h, w = pixels.shape
    up = np.asarray(Image.fromarray(heatmap_u8, mode="L").resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
    gray = np.repeat(pixels[..., None].astype(np.float32) / 255.0, 3, axis=2)
    return np.rint(255 * ((1 - alpha) * gray + alpha * _jet(up))).astype(np.uint8)


def render_preview(blocks: list[tuple[str, int]], frag: dict, columns: int = PREVIEW_COLUMNS) -> bytes:
    """One band per condition: a label, a row of synthetic images, and under each its Grad-CAM heatmap
    for that condition (the layout of Salehinejad et al., ICASSP 2018, with heatmaps added)."""
    from PIL import Image, ImageDraw

    pos = {int(i): k for k, i in enumerate(frag["preview_index"])}
    starts = np.concatenate([[0], np.cumsum([n for _, n in blocks])[:-1]])
    cols = max(1, min(columns, max(n for _, n in blocks)))
    gap, label = 4, 16
    band = label + 2 * TILE + gap
    width = gap + cols * (TILE + gap)
    canvas = np.full((gap + len(blocks) * (band + gap), width, 3), 255, np.uint8)
    for b, ((condition, n), start) in enumerate(zip(blocks, starts)):
        y0 = gap + b * (band + gap) + label
        for c in range(min(cols, n)):
            k = pos.get(int(start + c))
            if k is None:
                continue
            px, hm = frag["preview_pixels"][k], frag["preview_heatmaps"][k]
            x0 = gap + c * (TILE + gap)
            canvas[y0 : y0 + TILE, x0 : x0 + TILE] = px[..., None]
            canvas[y0 + TILE : y0 + 2 * TILE, x0 : x0 + TILE] = heatmap_overlay(px, hm)
    im = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(im)
    for b, (condition, n) in enumerate(blocks):
        draw.text((gap, gap + b * (band + gap) + 2), f"{condition}  ({n} images; heatmap below each)", fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# -- dataset card -----------------------------------------------------------------------------

def build_card(ds, mv, shards, reviews, table, filter_summary, blocks, *, manifest: tuple[str, int]) -> dict:
    from service.modelversions.service import privacy_summary, researcher_card

    mcard = mv.card or {}
    td = mcard.get("training_data") if isinstance(mcard.get("training_data"), dict) else {}
    nc_sa = td.get("share_alike_noncommercial") or mcard.get("share_alike_noncommercial") or {}
    licences = td.get("licences") or mcard.get("licences") or {}
    citations = td.get("citations") or mcard.get("citations") or {}
    cal = mv.privacy_calibration or {}
    per_condition = {}
    for condition, _ in blocks:
        m = table["condition"] == condition
        p = table["prob"][m]
        per_condition[condition] = {
            "images": int(m.sum()),
            "mean_classifier_probability": float(np.nanmean(p)) if m.any() else None,
            "share_recognised": float(np.nanmean(p >= 0.5)) if m.any() else None,
        }
    nn = table["nn"]
    released = utcnow()
    obligations = []
    if nc_sa.get("applies"):
        obligations.append(
            "CC BY-NC-SA 4.0: part of the training data is licensed CC BY-NC-SA, so this dataset may be used "
            "for non-commercial purposes only, must be shared under the same licence, and must attribute "
            f"the sources ({', '.join(nc_sa.get('sources') or []) or 'see citations'})."
        )
    obligations.append("Cite this dataset and the training-data sources listed below.")
    model_ref = f"{mv.name}:{mv.version}"
    year = released.year
    cite_text = (f"xraysynth synthetic chest X-ray dataset {ds.id}, generated by model {model_ref} "
                 f"(seed {ds.seed}), {ds.total_images} images, released {released:%Y-%m-%d}.")
    bibtex = (
        f"@misc{{xraysynth_{str(ds.id)[:8]},\n"
        f"  title = {{Synthetic chest X-ray dataset {ds.id}}},\n"
        f"  author = {{{{xraysynth}}}},\n"
        f"  year = {{{year}}},\n"
        f"  note = {{Generated by model {model_ref}, seed {ds.seed}, {ds.total_images} images; "
        f"synthetic images, no real patients}}\n}}"
    )
    return {
        "card_version": 1,
        "dataset": {
            "id": str(ds.id),
            "status": "ready",
            "released_at": released.isoformat(),
            "total_images": ds.total_images,
            "synthetic": True,
            "licence": "CC BY-NC-SA 4.0 (inherited from the training data)" if nc_sa.get("applies") else None,
        },
        "request": {
            "conditions": {c: n for c, n in blocks},
            "format": str(getattr(ds.format, "value", ds.format)),
            "heatmaps": bool(ds.heatmaps),
            "seed": int(ds.seed),
            "purpose": ds.purpose,
            "requested_at": ds.created_at.isoformat() if isinstance(ds.created_at, datetime) else None,
            "image_order": "conditions in the model's order, each a contiguous block of its count",
        },
        "approvals": reviews or [{"reviewer": "system", "decision": "approve", "note": "approved by policy"}],
        "model": {
            "id": str(mv.id),
            "name": mv.name,
            "version": mv.version,
            "architecture": mv.architecture,
            "image_size": mv.image_size,
            "training_fingerprint": mv.training_fingerprint,
            "published_at": mv.published_at.isoformat() if mv.published_at else None,
            "card": researcher_card(mcard),
        },
        "metrics": {
            "model": mv.metrics or {},
            "dataset": {
                "per_condition": per_condition,
                "nearest_training_score": {
                    "min": float(np.min(nn)), "p01": float(np.quantile(nn, 0.01)),
                    "p05": float(np.quantile(nn, 0.05)), "median": float(np.median(nn)),
                },
            },
        },
        "privacy": {
            "memorisation_filter": {
                **filter_summary,
                "method": cal.get("method"),
                "same_patient_catch_rate": cal.get("same_patient_catch_rate"),
                "different_patient_flag_rate": cal.get("different_patient_flag_rate"),
                "targets_met": cal.get("targets_met"),
            },
            **{k: v for k, v in privacy_summary(mv).items() if k != "memorisation_filter"},
            "note": "Every released image was compared with every training image; images closer than the "
                    "calibrated threshold were regenerated. Nearest real images are shown to hospital admins only.",
        },
        "training_data": {
            "licences": licences,
            "citations": citations,
            "share_alike_noncommercial": nc_sa or {"applies": False},
            "patients_per_condition": mv.patients_per_condition,
            "caveats": mcard.get("caveats") or mcard.get("limitations"),
        },
        "obligations": obligations,
        "files": {
            "manifest": {"name": "manifest.csv", "sha256": manifest[0], "size": manifest[1],
                         "columns": layout.MANIFEST_COLUMNS},
            "shards": [{"name": layout.shard_name(sh.index), "sha256": sh.sha256, "size": sh.size,
                        "images": [sh.start, sh.stop]} for sh in shards],
            "preview": "preview.png",
            "layout": "WebDataset tars: <index>.png|.dcm, <index>.heatmap.png (32x32 Grad-CAM of the requested "
                      "condition), <index>.json (provenance)",
        },
        "reproduce": "image i = generator(latent_batch(seed, i, attempt), condition) of the model version above; "
                     "attempt is in the manifest",
        "how_to_cite": {"text": cite_text, "bibtex": bibtex, "model": mcard.get("how_to_cite")},
    }


def render_card_md(card: dict) -> str:
    d, r, m, p, t = card["dataset"], card["request"], card["model"], card["privacy"], card["training_data"]
    f = p["memorisation_filter"]
    lines = [
        f"# Synthetic chest X-ray dataset {d['id']}",
        "",
        f"**{d['total_images']} synthetic images** (no real patients) generated by model **{m['name']} "
        f"{m['version']}** ({m['architecture']}, {m['image_size']} px), released {d['released_at'][:10]}.",
        "",
    ]
    if d.get("licence"):
        lines += [f"**Licence:** {d['licence']}", ""]
    lines += ["## Request", "", "| condition | images |", "|---|---|"]
    lines += [f"| {c} | {n} |" for c, n in r["conditions"].items()]
    lines += ["", f"Format: {r['format']}; heatmaps: {'yes' if r['heatmaps'] else 'no'}; seed: {r['seed']}.", "",
              f"Purpose: {r['purpose']}", "", "## Approvals", ""]
    lines += [f"- {a['reviewer']}: {a['decision']}" + (f" ({a['at']})" if a.get("at") else "") for a in card["approvals"]]
    lines += ["", "## Privacy", "",
              f"- Memorisation filter: every image compared with the training set; {f['n_rejected']} of "
              f"{f['n_generated']} generated images were too close (score < {f['threshold']:.3f}) and regenerated.",
              f"- Calibration on the real training set: {_pct(f.get('different_patient_flag_rate'))} of images flagged "
              f"against their nearest other patient (the false-positive rate); "
              f"{_pct(f.get('same_patient_catch_rate'))} of images caught against the same patient's other images "
              "(the filter detects copies and near-copies, not patient identity)."]
    dp = p.get("differential_privacy")
    lines.append(f"- Differential privacy: epsilon {dp['epsilon']}, delta {dp['delta']}." if dp else
                 "- Differential privacy: not used in training.")
    mia = p.get("membership_inference")
    if mia:
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in (mia.get("aucs") or {}).items() if isinstance(v, (int, float)))
        lines.append(f"- Membership-inference attack AUCs (0.5 = no better than chance): {aucs}.")
    lines += ["", "## Quality", "", "| condition | images | mean classifier probability |", "|---|---|---|"]
    for c, v in card["metrics"]["dataset"]["per_condition"].items():
        mp = v["mean_classifier_probability"]
        lines.append(f"| {c} | {v['images']} | {'' if mp is None else f'{mp:.3f}'} |")
    if card["metrics"]["model"]:
        lines += ["", "Model metrics (test split; all figures in dataset_card.json):", ""]
        lines += [f"- {line}" for line in _model_quality_lines(card["metrics"]["model"])]
    lines += ["", "## Training data: licences and citations", ""]
    lines += [f"- {lic}: {n} images" for lic, n in (t.get("licences") or {}).items()]
    lines += [""] + [f"- {src}: {cit}" for src, cit in (t.get("citations") or {}).items()]
    if t.get("caveats"):
        lines += ["", "Caveats:", ""] + [f"- {c}" for c in t["caveats"]]
    lines += ["", "## Obligations", ""] + [f"- {o}" for o in card["obligations"]]
    lines += ["", "## Files", "", "- manifest.csv: " + ", ".join(card["files"]["manifest"]["columns"]),
              f"- {len(card['files']['shards'])} shard(s): {card['files']['layout']}", "- preview.png",
              "", "## How to cite", "", card["how_to_cite"]["text"], "", "```bibtex", card["how_to_cite"]["bibtex"], "```", ""]
    return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if not isinstance(x, (int, float)) else f"{100 * x:.2f} %"


def _model_quality_lines(m: dict) -> list[str]:
    """The headline figures of `xraysynth evaluate` (the card's metrics) as sentences; a figure the
    metrics lack is left out."""

    def numbers(*path_and_keys):
        *path, keys = path_and_keys
        d = m
        for p in path:
            d = d.get(p) if isinstance(d, dict) else None
        vals = [d.get(k) if isinstance(d, dict) else None for k in keys]
        return vals if all(isinstance(v, (int, float)) for v in vals) else None

    templates = [
        (("frechet", "all_sources", ("fd", "floor", "n_synthetic")),
         "Fréchet distance to real test images {:.2f} (real-vs-real floor {:.2f}, n = {} synthetic)"),
        (("fidelity", ("macro_auc_synthetic", "macro_auc_real")),
         "condition classifier macro AUC on synthetic images {:.3f} (on real test images {:.3f})"),
        (("tstr", "all_sources", ("tstr_macro_auc", "trtr_macro_auc")),
         "train on synthetic, test on real: macro AUC {:.3f} (train on real: {:.3f})"),
        (("precision_recall_coverage", "all_sources", "synthetic_vs_test", ("precision", "recall")),
         "k-NN precision {:.3f}, recall {:.3f}"),
    ]
    return [text.format(*vals) for where, text in templates if (vals := numbers(*where))]
