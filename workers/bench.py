"""`xraysynth bench pipeline`: throughput of each generation stage alone and of the whole pipeline.

Stages, each timed on its own over the same images: generator, Grad-CAM, privacy filter (nearest
neighbour against an index of ``index_size`` training images), encode (the process pool, PNG/DICOM +
heatmap + JSON + tar), upload (S3 multipart), provenance insert (COPY). Then the whole pipeline —
the worker's own ``produce_shard`` + upload + COPY, shard after shard — and end-to-end ÷ slowest.

On a GPU the device stages (generator, Grad-CAM, filter) run while the CPU pool encodes, so the
pipeline approaches its slowest stage. On a CPU-only box every stage competes for the same cores;
the table therefore also reports end-to-end against the device chain (the three device stages run
back to back), which is the best a CPU box can do.

Storage: the configured S3 store, or an embedded SeaweedFS started for the run if none answers.
Database: the configured one (a temporary table, dropped afterwards); skipped if unreachable.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from service import layout, storage
from service.db import get_sessionmaker
from service.embedded import start_seaweedfs
from service.settings import get_settings
from workers import retry
from workers.config import worker_settings
from workers.device import DeviceStage, prepare_for_inference
from workers.encode import EncodeContext, ImageRecord, ShardTarWriter, encode_chunk, heatmaps_to_uint8
from workers.produce import ENCODE_CHUNK, ShardJob, produce_shard
from workers.record import bulk_insert_provenance

GEN_GAIN = 3.0  # an untrained generator's default init draws near-flat images; scaled, they have texture

TEMP_TABLE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS bench_synthetic_images (dataset_id uuid, \"index\" integer, "
    "shard_index integer, condition varchar(64), seed bigint, attempt smallint, sha256 varchar(64), "
    "probability double precision, nn_distance double precision)"
)


def rss_mb(pids: list[int] | None = None) -> float:
    """Resident memory of this process (plus ``pids``), MiB, from /proc."""
    total = 0
    for pid in ["self", *(pids or [])]:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _pool_pids(pool) -> list[int]:
    return list(getattr(pool, "_processes", {}) or {}) if pool is not None else []


def _bench_model(bundle_path: str | None, ngf: int | None, index_size: int, device: str):
    import torch

    # torch: imported when the bench runs, so `xraysynth bench … --help` stays light
    from models.bundle import load_bundle, untrained_bundle
    from models.conditions import CONDITIONS
    from models.privacy import build_privacy_index, calibrate

    if bundle_path:
        bundle = load_bundle(Path(bundle_path).read_bytes(), device=device)
        source = bundle_path
    else:
        bundle = untrained_bundle(CONDITIONS, config={"ngf": ngf} if ngf else None).to(device)
        with torch.no_grad():
            for m in bundle.generator.modules():
                if isinstance(m, torch.nn.ConvTranspose2d):
                    m.weight.mul_(GEN_GAIN)
        source = f"untrained (ngf={bundle.config['ngf']})"
    prepare_for_inference(bundle)
    # A stand-in training set of the requested size (smooth random images), indexed and calibrated the
    # way a registered model version is.
    rng = np.random.default_rng(0)
    low = rng.normal(size=(index_size, 16, 16)).astype(np.float32)
    imgs = np.clip(np.kron(low, np.ones((8, 8), np.float32)) * 40 + 128, 0, 255).astype(np.uint8)
    trainset = SimpleNamespace(images=imgs, splits=np.full(index_size, "train"), fingerprint="",
                               patient_ids=np.array([f"p{i // 2}" for i in range(index_size)]),
                               image_ids=np.array([f"img{i}" for i in range(index_size)]),
                               sources=np.full(index_size, "bench"))
    index = build_privacy_index(bundle, trainset, split=None)
    calibration = calibrate(index, trainset)
    index.to(device)
    loaded = SimpleNamespace(bundle=bundle, privacy_index=index, calibration=calibration, device=device,
                             meta={"id": "bench", "name": "bench", "version": "0"})
    return loaded, source


def _storage(stack: ExitStack, console: Console) -> str:
    """The configured store if it answers, else an embedded SeaweedFS for this run."""

    try:
        storage.ping()
        storage.ensure_buckets()
        return "configured S3 store"
    except Exception:  # noqa: BLE001 — any failure means: bring our own
        pass

    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="xraysynth-bench-s3-"))
    key, secret = "bench-" + uuid.uuid4().hex[:6], uuid.uuid4().hex
    server = start_seaweedfs(Path(tmp), access_key=key, secret_key=secret)
    stack.callback(server.stop)
    os.environ.update({"XRAYSYNTH_S3_ENDPOINT_URL": server.endpoint, "XRAYSYNTH_S3_ACCESS_KEY_ID": key,
                       "XRAYSYNTH_S3_SECRET_ACCESS_KEY": secret})
    get_settings.cache_clear()
    storage.reset_clients()
    storage.ensure_buckets()
    console.print(f"[dim]no S3 store answered; using an embedded SeaweedFS at {server.endpoint}[/]")
    return "embedded SeaweedFS"


def _db_session(stack: ExitStack):
    """A session with the temporary provenance table, or None if the database is unreachable."""
    from sqlalchemy import text


    try:
        session = get_sessionmaker()()
        if session.connection().dialect.name != "postgresql":
            session.close()
            return None
        session.execute(text(TEMP_TABLE_DDL))
        session.commit()
    except Exception:  # noqa: BLE001
        return None
    stack.callback(session.close)
    return session


def _copy(session, rows) -> None:
    from sqlalchemy import text


    bulk_insert_provenance(session, rows, table="bench_synthetic_images")
    session.commit()
    session.execute(text("TRUNCATE bench_synthetic_images"))  # keep the table small: cost is per shard
    session.commit()


def run_pipeline_bench(
    n_images: int = 2048,
    batch: int = 128,
    heatmaps: bool = True,
    fmt: str = "png",
    shard_size: int = 512,
    index_size: int = 4096,
    encode_processes: int | None = None,
    bundle_path: str | None = None,
    ngf: int | None = None,
    rss_images: int = 0,
    console: Console | None = None,
) -> dict:
    """Time each stage alone and the whole pipeline; print a table; return the figures."""
    import torch

    # torch: imported when the bench runs, so `xraysynth bench … --help` stays light
    from models.privacy import memorisation_filter

    console = console or Console()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {"device": device, "torch_threads": torch.get_num_threads(), "n_images": n_images,
                     "batch": batch, "format": fmt, "heatmaps": heatmaps, "shard_size": shard_size,
                     "index_size": index_size, "stages": {}}
    stack = ExitStack()
    with stack:
        with console.status("setting up: model, privacy index, storage, database…"):
            loaded, source = _bench_model(bundle_path, ngf, index_size, device)
            results["model"] = source
            results["storage"] = _storage(stack, console)
            session = _db_session(stack)
            results["database"] = "postgres (temporary table)" if session is not None else "unreachable: skipped"
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            size = worker_settings().encode_pool_size if encode_processes is None else encode_processes
            pool = stack.enter_context(ProcessPoolExecutor(size, mp_context=mp.get_context("spawn"))) if size else None
            results["encode_processes"] = size
            if pool is not None:  # start the children now, not inside a timed stage
                list(pool.map(abs, range(size)))
        blocks = [("Mass", n_images // 2), ("Effusion", n_images - n_images // 2)]
        stage = DeviceStage(loaded, 1234, blocks)
        bucket = get_settings().private_bucket
        prefix = f"bench/{uuid.uuid4().hex}/"
        stack.callback(lambda: retry.delete_prefix(bucket, prefix))

        def timed(name: str, images: int, fn, note: str = "") -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            results["stages"][name] = {"images": images, "seconds": dt, "img_per_s": images / dt, "note": note}

        # warm-up: first calls pay for allocator and kernel selection
        xq, px, cls = stage.generate(np.arange(batch), np.zeros(batch, np.int64))
        stage.gradcam(xq, cls)
        batches = [np.arange(s, min(s + batch, n_images)) for s in range(0, n_images, batch)]
        kept: list = []
        pixels = np.zeros((n_images, 128, 128), np.uint8)

        def gen():
            for idx in batches:
                xq, px, cls = stage.generate(idx, np.zeros(len(idx), np.int64))
                pixels[idx] = px
                if len(kept) < 4:
                    kept.append((xq, cls))

        timed("generator", n_images, gen, f"{device}, batch {batch}")
        emb = [None] * len(batches)
        heat = np.zeros((n_images, 32, 32), np.uint8)
        probs = np.zeros(n_images, np.float32)

        def cam():
            for k, idx in enumerate(batches):
                xq, cls = kept[k % len(kept)]
                r = stage.gradcam(xq[: len(idx)], cls[: len(idx)])
                emb[k] = r.embeddings.float().cpu().numpy()
                heat[idx] = heatmaps_to_uint8(r.heatmaps.float().cpu().numpy())
                probs[idx] = r.probs.float().cpu().numpy()

        timed("grad-cam", n_images, cam, "heatmaps + probabilities + embeddings, one pass")
        scores = np.zeros(n_images, np.float32)

        def filt():
            for k, idx in enumerate(batches):
                scores[idx] = memorisation_filter(loaded.privacy_index, loaded.calibration, pixels[idx], emb[k]).score

        timed("privacy filter", n_images, filt, f"nearest of {index_size} training images, 2 spaces")
        ctx = EncodeContext("bench", fmt, loaded.meta, 6, worker_settings().dicom_uid_root, {"Mass": 11, "Effusion": 6})
        records = [ImageRecord(i, "Mass", 1234, 0, float(probs[i]), float(scores[i]), pixels[i],
                               heat[i] if heatmaps else None) for i in range(n_images)]
        tar_files: list = []

        def encode():
            for s0 in range(0, n_images, shard_size):
                tmp = tempfile.TemporaryFile(prefix="xraysynth-bench-")
                stack.callback(tmp.close)
                w = ShardTarWriter(tmp)
                chunks = [records[c : c + ENCODE_CHUNK] for c in range(s0, min(s0 + shard_size, n_images), ENCODE_CHUNK)]
                results_iter = pool.map(encode_chunk, chunks, [ctx] * len(chunks)) if pool else map(
                    encode_chunk, chunks, [ctx] * len(chunks))
                for encoded in results_iter:
                    for e in encoded:
                        w.add_sample(e)
                sha, _ = w.close()
                tar_files.append((tmp, sha, min(shard_size, n_images - s0)))

        timed("encode", n_images, encode, f"{fmt}{' + heatmap' if heatmaps else ''} + json + tar, {size} processes")
        mean_tar = np.mean([os.fstat(f.fileno()).st_size for f, _, _ in tar_files]) / 2**20

        def upload():
            for k, (f, sha, _) in enumerate(tar_files):
                retry.upload_fileobj(bucket, f"{prefix}stage-{k:05d}.tar", f, "application/x-tar", sha)

        timed("upload", n_images, upload, f"{results['storage']}, {mean_tar:.1f} MiB a shard")
        rows = [(uuid.UUID(int=1), i, i // shard_size, "Mass", 1234, 0, "0" * 64, float(probs[i]), float(scores[i]))
                for i in range(n_images)]
        if session is not None:
            timed("provenance insert", n_images,
                  lambda: [_copy(session, rows[s : s + shard_size]) for s in range(0, n_images, shard_size)],
                  "COPY, one transaction a shard")

        generated = {"n": 0, "rejected": 0}

        def pipeline(total: int, samples: list | None = None):
            ds_id = uuid.uuid4()
            spec = [("Mass", total // 2), ("Effusion", total - total // 2)]
            for k, s0 in enumerate(range(0, total, shard_size)):
                job = ShardJob(ds_id, k, s0, min(s0 + shard_size, total), 1234, spec, fmt, heatmaps, total)
                with tempfile.TemporaryFile(prefix="xraysynth-bench-") as tmp:
                    out = produce_shard(job, loaded, tmp, pool=pool, batch_size=batch,
                                        max_attempts=worker_settings().max_filter_attempts,
                                        uid_root=worker_settings().dicom_uid_root)
                    retry.upload_fileobj(bucket, f"{prefix}{ds_id}/" + layout.shard_name(k), tmp, "application/x-tar",
                                         out.sha256)
                if session is not None:
                    _copy(session, out.rows)
                generated["n"] += out.evidence.n_generated
                generated["rejected"] += out.evidence.n_rejected
                if samples is not None:
                    samples.append((job.stop, rss_mb(), rss_mb(_pool_pids(pool)) - rss_mb()))

        timed("whole pipeline", n_images, lambda: pipeline(n_images),
              "produce_shard (generate→Grad-CAM→filter→encode in the pool) + upload + COPY, shard by shard")
        st = results["stages"]["whole pipeline"]
        st["note"] += f"; {generated['rejected']} of {generated['n']} generated images filtered and regenerated"
        results["pipeline_filtered"] = dict(generated)

        if rss_images:
            samples: list = []
            t0 = time.perf_counter()
            with console.status(f"long run: {rss_images} images, RSS after every shard…"):
                pipeline(rss_images, samples)
            results["rss_run"] = _rss_summary(samples, rss_images, time.perf_counter() - t0)

    st = results["stages"]
    alone = {k: v["img_per_s"] for k, v in st.items() if k != "whole pipeline"}
    slowest = min(alone, key=alone.get)
    e2e = st["whole pipeline"]["img_per_s"]
    device_chain = 1.0 / sum(1.0 / alone[k] for k in ("generator", "grad-cam", "privacy filter"))
    results.update({"slowest_stage": slowest, "end_to_end_img_per_s": e2e,
                    "end_to_end_over_slowest": e2e / alone[slowest],
                    "device_chain_img_per_s": device_chain, "end_to_end_over_device_chain": e2e / device_chain})
    _print(console, results)
    _save(results)
    return results


def _rss_summary(samples: list, total: int, seconds: float) -> dict:
    images = np.array([s[0] for s in samples])
    main = np.array([s[1] for s in samples])
    pool = np.array([s[2] for s in samples])
    warm = max(1, len(samples) // 10)  # after the first tenth: allocator and caches settled
    a, b = warm - 1, len(samples) - 1
    return {
        "images": total, "seconds": seconds, "shards": len(samples),
        "rss_mb_after": {int(images[i]): round(float(main[i]), 1) for i in sorted({0, a, len(samples) // 2, b})},
        "pool_rss_mb_after": {int(images[i]): round(float(pool[i]), 1) for i in sorted({0, a, b})},
        "growth_mb": round(float(main[b] - main[a]), 1),
        "growth_mb_per_10k_images": round(float((main[b] - main[a]) / max(images[b] - images[a], 1) * 10_000), 2),
        "from_images": int(images[a]), "to_images": int(images[b]),
    }


def _print(console: Console, r: dict) -> None:
    table = Table(title=f"generation pipeline — {r['n_images']} images, 128 px, {r['device']} "
                        f"({r['torch_threads']} torch threads), model: {r['model']}")
    for col, just in (("stage", "left"), ("images", "right"), ("seconds", "right"), ("img/s", "right"),
                      ("", "left")):
        table.add_column(col, justify=just)
    for name, s in r["stages"].items():
        style = "bold" if name == "whole pipeline" else ("yellow" if name == r["slowest_stage"] else None)
        table.add_row(name, str(s["images"]), f"{s['seconds']:.2f}", f"{s['img_per_s']:.1f}", s["note"], style=style)
    console.print(table)
    console.print(f"end-to-end ÷ slowest stage ({r['slowest_stage']}): [bold]{r['end_to_end_over_slowest']:.2f}[/]")
    console.print(f"end-to-end ÷ device chain (generator → Grad-CAM → filter back to back, "
                  f"{r['device_chain_img_per_s']:.1f} img/s): [bold]{r['end_to_end_over_device_chain']:.2f}[/]")
    console.print(f"storage: {r['storage']}; database: {r['database']}; encode processes: {r['encode_processes']}")
    if "rss_run" in r:
        x = r["rss_run"]
        console.print(f"RSS over {x['images']} images ({x['shards']} shards, {x['seconds']:.0f} s): worker "
                      f"{x['rss_mb_after']} MiB; growth {x['growth_mb']} MiB from {x['from_images']} to "
                      f"{x['to_images']} images ({x['growth_mb_per_10k_images']} MiB per 10k); encode pool "
                      f"{x['pool_rss_mb_after']} MiB")


def _save(r: dict) -> None:
    out = Path("bench/out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(r, indent=1, default=str))
    except OSError:
        pass


pipeline_app = typer.Typer(add_completion=False)


@pipeline_app.command("pipeline")
def pipeline_command(
    n_images: Annotated[int, typer.Option(min=1, help="Images per stage and for the whole pipeline.")] = 2048,
    batch: Annotated[int, typer.Option(min=1, help="Device batch (≥ 1,024 on a GPU).")] = 128,
    heatmaps: Annotated[bool, typer.Option("--heatmaps/--no-heatmaps")] = True,
    fmt: Annotated[str, typer.Option("--format", help="png or dicom.")] = "png",
    shard_size: Annotated[int, typer.Option(min=1)] = 512,
    index_size: Annotated[int, typer.Option(min=8, help="Training images in the privacy index.")] = 4096,
    encode_processes: Annotated[Optional[int], typer.Option(min=0, help="Default: cores - 1.")] = None,
    bundle: Annotated[Optional[str], typer.Option(help="A model bundle (.pt); default: an untrained one.")] = None,
    ngf: Annotated[Optional[int], typer.Option(help="Generator width of the untrained model.")] = None,
    rss_images: Annotated[int, typer.Option(help="Then run this many images and report RSS growth.")] = 0,
) -> None:
    """Each stage alone and the whole pipeline: img/s, end-to-end ÷ slowest stage, RSS growth."""
    run_pipeline_bench(n_images=n_images, batch=batch, heatmaps=heatmaps, fmt=fmt, shard_size=shard_size,
                       index_size=index_size, encode_processes=encode_processes, bundle_path=bundle, ngf=ngf,
                       rss_images=rss_images)


if __name__ == "__main__":
    pipeline_app()
