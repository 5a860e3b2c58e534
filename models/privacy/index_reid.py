"""The re-identification side of the privacy index: the verifier's vectors of the indexed training
images, of the held-out (val+test) images for the DCR share, their search and their persistence.

Kept apart from ``index.py`` (the copy check's two spaces) so each check reads on its own; the
``PrivacyIndex`` constructor sets the attributes used here (``reid``, ``reid_payload``,
``holdout_reid``, ``dcr_rows``).
"""

from __future__ import annotations

import json

import numpy as np

from models.privacy.features import as_uint8_images

STATE_PREFIX = "reid_state__"


class ReidSpaceMixin:
    @property
    def has_reid(self) -> bool:
        return self.reid is not None and self.reid_payload is not None

    @property
    def reid_space(self):
        # lazy: loaded on first use, so importing models.privacy stays torch-free
        from models.privacy.reid import space_from_payload

        if self._reid_space is None and self.reid_payload is not None:
            self._reid_space = space_from_payload(self.reid_payload)
        return self._reid_space

    def nearest_reid(self, pixels_uint8, *, rows=None, against=None) -> tuple[np.ndarray, np.ndarray]:
        """Verifier distance of each query to its nearest row (or to ``against`` vectors) ->
        (distance [B], row [B]; the row indexes ``rows`` when given)."""
        # lazy: loaded on first use, so importing models.privacy stays torch-free
        from models.privacy.reid_eval import nearest

        if not self.has_reid:
            raise ValueError("this privacy index has no re-identification verifier")
        q = self.reid_space.query(as_uint8_images(pixels_uint8))
        x = against if against is not None else (self.reid if rows is None else self.reid[rows])
        return nearest(q, x)

    def dcr_share(self, pixels_uint8) -> dict | None:
        """Share of images closer (verifier distance) to a training image than to a held-out one,
        with the training side a random subset as large as the held-out set: ~50 % is what a
        generator that memorised nobody gives."""
        if not self.has_reid or self.holdout_reid is None or self.dcr_rows is None or len(pixels_uint8) == 0:
            return None
        d_train, _ = self.nearest_reid(pixels_uint8, rows=self.dcr_rows)
        d_hold, _ = self.nearest_reid(pixels_uint8, against=self.holdout_reid)
        return {"share_closer_to_training": float(np.mean(d_train < d_hold)), "n_images": int(len(d_train)),
                "n_training_images": int(len(self.dcr_rows)), "n_heldout_images": int(len(self.holdout_reid))}

    # -- persistence (arrays beside the copy check's in the index's .npz) ------------------------

    def _reid_arrays(self) -> dict:
        if not self.has_reid:
            return {}
        p = self.reid_payload
        out = {"reid": self.reid, "reid_kind": np.str_(p["kind"]), "reid_size": np.int64(p.get("size", 32))}
        for k in ("projection", "offset", "shifts", "angles"):
            if k in p:
                v = p[k]
                out["reid_" + k] = v.float().numpy() if hasattr(v, "float") and hasattr(v, "numpy") else np.asarray(v, dtype=np.float32)
        out["reid_info_json"] = np.str_(json.dumps(p.get("info") or {}, sort_keys=True))
        if "state" in p:  # a network's weights (kind "cnn"): one array per tensor, fp16 as shipped
            out["reid_net_json"] = np.str_(json.dumps({k: p[k] for k in ("arch", "width", "dim") if k in p}))
            for k, v in p["state"].items():
                out[STATE_PREFIX + k] = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        if self.holdout_reid is not None:
            out["holdout_reid"] = self.holdout_reid
        if self.dcr_rows is not None:
            out["dcr_rows"] = self.dcr_rows
        return out

    @staticmethod
    def _reid_from(z) -> dict:
        if "reid" not in z.files:
            return {}
        p = {"kind": str(z["reid_kind"]), "size": int(z["reid_size"]), "info": json.loads(str(z["reid_info_json"]))}
        for k in ("projection", "offset", "angles"):
            if "reid_" + k in z.files:
                p[k] = z["reid_" + k]
        if "reid_net_json" in z.files:
            p.update(json.loads(str(z["reid_net_json"])))
            p["state"] = {k[len(STATE_PREFIX):]: z[k] for k in z.files if k.startswith(STATE_PREFIX)}
        if "reid_shifts" in z.files:
            p["shifts"] = [tuple(int(v) for v in s) for s in z["reid_shifts"].tolist()]
        return {"reid": z["reid"], "reid_payload": p,
                "holdout_reid": z["holdout_reid"] if "holdout_reid" in z.files else None,
                "dcr_rows": z["dcr_rows"] if "dcr_rows" in z.files else None}


def reid_vectors(payload, trainset, images, split, n_rows: int) -> dict:
    """The verifier's vectors of the indexed images and of the held-out (val+test) images."""
    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.privacy.reid import space_from_payload

    space = space_from_payload(payload)
    if space is None:
        return {}
    splits = np.asarray(trainset.splits).astype(str)
    held = np.flatnonzero(np.isin(splits, ["val", "test"])) if split == "train" else np.zeros(0, np.int64)
    hold = space.index(np.asarray(trainset.images)[held]) if len(held) else None
    rng = np.random.default_rng(0)
    dcr = np.sort(rng.choice(n_rows, size=min(len(held), n_rows), replace=False)) if len(held) else None
    return {"reid": space.index(images), "reid_payload": payload, "holdout_reid": hold, "dcr_rows": dcr}
