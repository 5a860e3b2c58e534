"""generating → ready, once the last shard is recorded: manifest, dataset card, preview grid, and the
admin's privacy evidence (private bucket), then `ready` through the transition table.

Refuses to release unless the memorisation filter provably ran on every image: every provenance row
has its nearest-training-image score, the rows are exactly the indices 0..N-1, and the model version
has a privacy index. Numpy, Pillow and the database only; the synthetic pixels for the preview and
the evidence come from the per-shard fragments, so finalising needs no GPU and no torch.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid

from sqlalchemy import select

from service import layout
from service.accounts.models import Account
from service.audit.service import SYSTEM
from service.datasets.card import uninformative_heatmaps
from service.datasets.models import Dataset, DatasetStatus, Shard, ShardStatus
from service.datasets.transitions import transition
from service.db import session_scope
from service.modelversions.models import ModelVersion
from service.reviews.models import Review
from service.settings import get_settings
from workers import cleanup, leases, outages, retry, state
from workers.card import build_card, render_card_md
from workers.evidence import build_evidence
from workers.manifest import NotReleasable, load_fragments, write_manifest
from workers.preview import render_preview

log = logging.getLogger("xraysynth.worker.finalise")


# -- entry point ------------------------------------------------------------------------------

def finalise_dataset(dataset_id: uuid.UUID) -> str:
    job = leases.finalise_job(dataset_id)
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
            if outages.is_outage(exc):
                return outages.interrupted(f"dataset {dataset_id} finalise", exc)
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
        preview_png = render_preview(blocks, fragments, uninformative=uninformative_heatmaps(mv.card))
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
