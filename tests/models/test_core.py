"""Contract pieces: conditions, latents, imaging, networks, bundle."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models.bundle import bundle_bytes, load_bundle, save_bundle, untrained_bundle
from models.conditions import CONDITIONS, canonical
from models.imaging import from_uint8, to_uint8
from models.latents import latent_batch
from models.networks import Classifier, Discriminator, Generator, label_mean


def test_conditions_canonical_order_and_aliases():
    assert len(CONDITIONS) == 16 and CONDITIONS[0] == "No Finding" and CONDITIONS[-1] == "COVID-19"
    assert canonical("pleural thickening") == "Pleural_Thickening"
    assert canonical("covid19") == "COVID-19"
    with pytest.raises(KeyError):
        canonical("Flu")


def test_latents_depend_only_on_seed_index_attempt():
    a = latent_batch(7, np.arange(100), 0, 128)
    assert a.shape == (100, 128) and a.dtype == np.float32
    b = latent_batch(7, np.array([42, 3]), np.array([0, 0]), 128)
    assert np.array_equal(b[0], a[42]) and np.array_equal(b[1], a[3])  # batch-independent
    assert not np.array_equal(latent_batch(7, np.array([42]), 1, 128)[0], a[42])  # attempt matters
    assert not np.array_equal(latent_batch(8, np.array([42]), 0, 128)[0], a[42])  # seed matters
    big = latent_batch(1, np.arange(20000), 0, 64)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01
    assert latent_batch(1, np.arange(3), 0, 7).shape == (3, 7)  # odd nz


def test_uint8_round_trip():
    a = np.random.default_rng(0).integers(0, 256, (3, 128, 128), dtype=np.uint8)
    x = from_uint8(a)
    assert x.shape == (3, 1, 128, 128) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), a)


def test_network_shapes_and_multilabel_embedding():
    g, d, c = Generator(32, 16, 8), Discriminator(16, 8), Classifier(16, 8)
    z, y = torch.randn(3, 32), torch.zeros(3, 16)
    y[0, 1] = 1
    y[1, [2, 5]] = 1  # multi-label
    x = g(z, y)
    assert x.shape == (3, 1, 128, 128) and x.min() >= -1 and x.max() <= 1
    assert d(x, y).shape == (3,)
    assert c(x).shape == (3, 16) and c.embed(x).shape == (3, c.embed_dim)
    w = label_mean(y)
    assert torch.allclose(w.sum(1), torch.tensor([1.0, 1.0, 0.0]))  # mean of embeddings, empty row stays 0
    for norm in ("gn", "none"):
        assert Discriminator(16, 8, norm)(x, y).shape == (3,)


def test_bundle_round_trip_fp16_and_untrained(tmp_path):
    b = untrained_bundle(seed=3, config={"ngf": 8, "ndf": 8, "classifier_width": 8})
    z, y = torch.randn(2, b.nz), torch.eye(16)[:2]
    ref = b.generate(z, y)
    path = save_bundle(tmp_path / "b.pt", generator=b.generator, classifier=b.classifier,
                       discriminator=b.discriminator, conditions=b.conditions, config=b.config,
                       card={"name": "t", "metrics": {"x": 1.5}})
    for src in (path, path.read_bytes(), io.BytesIO(path.read_bytes())):
        b2 = load_bundle(src)
        assert not b2.generator.training and next(b2.generator.parameters()).dtype == torch.float32
        assert torch.allclose(b2.generate(z, y), ref, atol=2e-2)  # fp16 storage
        assert b2.card["metrics"]["x"] == 1.5 and b2.conditions == CONDITIONS
    # same init for the same seed; bytes are what save_bundle writes
    assert torch.equal(untrained_bundle(seed=3, config={"ngf": 8, "ndf": 8, "classifier_width": 8}).generate(z, y), ref)
    data = bundle_bytes(generator=b.generator, classifier=b.classifier, discriminator=None,
                        conditions=b.conditions, config=b.config, card={})
    assert load_bundle(data).discriminator is None


def test_default_bundle_size_under_budget():
    b = untrained_bundle()
    data = bundle_bytes(generator=b.generator, classifier=b.classifier, discriminator=b.discriminator,
                        conditions=b.conditions, config=b.config, card={})
    assert len(data) < 30e6


def test_condition_vectors_and_generate_batched():
    b = untrained_bundle(config={"ngf": 8, "ndf": 8, "classifier_width": 8})
    y = b.condition_vectors(["Hernia", "Mass", "Hernia"])
    assert y.shape == (3, 16) and y[0, CONDITIONS.index("Hernia")] == 1
    z = torch.from_numpy(latent_batch(0, np.arange(3), 0, b.nz))
    one = b.generate(z[:1], y[:1])
    assert torch.allclose(b.generate(z, y)[:1], one, atol=1e-5)  # eval mode: images independent of batch
