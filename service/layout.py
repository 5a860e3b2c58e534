"""The storage layout: every object key and release file name, the manifest's columns, the image order.

The one owner of these strings: the API (download lists, evidence, revocation), the workers (shards,
finalise, model registration) and the CLI all build keys here, so a layout change is one edit.

    release bucket   datasets/<dataset_id>/manifest.csv | dataset_card.md | dataset_card.json | preview.png
                     datasets/<dataset_id>/shards/shard-00000.tar
    private bucket   evidence/<dataset_id>/evidence.json | pairs.png | preview.png
                     evidence/<dataset_id>/shards/shard-00000.npz   (per-shard fragments for finalise)
                     models/<name>/<version>/bundle.pt | privacy_index.npz
"""

from __future__ import annotations

# -- release bucket ---------------------------------------------------------------------------

MANIFEST = "manifest.csv"
CARD_MD = "dataset_card.md"
CARD_JSON = "dataset_card.json"
PREVIEW = "preview.png"
# Written by the worker's finalise step beside the shards (DESIGN.md, "Release layout").
RELEASE_FILES = (MANIFEST, CARD_MD, CARD_JSON, PREVIEW)

MANIFEST_COLUMNS = ["index", "shard", "file", "condition", "seed", "attempt", "sha256", "heatmap_file", "probability"]


def release_prefix(dataset_id) -> str:
    return f"datasets/{dataset_id}/"


def release_key(dataset_id, name: str) -> str:
    return release_prefix(dataset_id) + name


def shard_name(index: int) -> str:
    """A shard's path inside the dataset (as listed in the manifest and the download list)."""
    return f"shards/shard-{index:05d}.tar"


def shard_key(dataset_id, index: int) -> str:
    return release_key(dataset_id, shard_name(index))


# -- members of a shard tar (WebDataset: a sample's files share the key) -----------------------

def key_width(total_images: int) -> int:
    return max(6, len(str(max(total_images - 1, 0))))


def sample_key(index: int, width: int) -> str:
    return f"{index:0{width}d}"


def image_file(key: str, fmt: str) -> str:
    return f"{key}.dcm" if fmt == "dicom" else f"{key}.png"


def heatmap_file(key: str) -> str:
    return f"{key}.heatmap.png"


def sidecar_file(key: str) -> str:
    return f"{key}.json"


# -- private bucket ---------------------------------------------------------------------------

EVIDENCE_JSON = "evidence.json"
EVIDENCE_PAIRS = "pairs.png"
EVIDENCE_PREVIEW = "preview.png"
EVIDENCE_IMAGES = (EVIDENCE_PAIRS, EVIDENCE_PREVIEW)


def evidence_prefix(dataset_id) -> str:
    return f"evidence/{dataset_id}/"


def evidence_key(dataset_id, name: str) -> str:
    return evidence_prefix(dataset_id) + name


def fragment_key(dataset_id, index: int) -> str:
    """Per-shard evidence (filter scores, closest images, preview tiles), merged by finalise."""
    return evidence_key(dataset_id, f"shards/shard-{index:05d}.npz")


def model_prefix(name: str, version: str) -> str:
    return f"models/{name}/{version}/"


def checkpoint_key(name: str, version: str) -> str:
    return model_prefix(name, version) + "bundle.pt"


def privacy_index_key(name: str, version: str) -> str:
    return model_prefix(name, version) + "privacy_index.npz"


# -- image order ------------------------------------------------------------------------------

def image_blocks(spec: dict[str, int], model_conditions: list[str]) -> list[tuple[str, int]]:
    """The spec's conditions in the model's condition order, each a contiguous block of its count:
    image i of a dataset belongs to the block that covers i."""
    order = {c: i for i, c in enumerate(model_conditions)}
    unknown = [c for c in spec if c not in order]
    if unknown:
        raise ValueError(f"the model does not offer {', '.join(unknown)}")
    return [(c, int(spec[c])) for c in sorted(spec, key=lambda c: order[c])]
