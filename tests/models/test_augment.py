"""DiffAugment: the transforms the recipe relies on do what they say and stay differentiable."""

from __future__ import annotations

import pytest
import torch

from models.augment import cutout, diff_augment, parse_policy


def test_cutout_blanks_a_quarter_of_the_image_to_mid_grey_at_most():
    x = torch.ones(64, 1, 32, 32)
    y = cutout(x, torch.Generator().manual_seed(0))
    blanked = (y == 0).float().flatten(1).mean(1)
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert (blanked <= 0.25 + 1e-6).all() and (blanked > 0).all() and blanked.max() == pytest.approx(0.25)


def test_the_full_policy_is_reproducible_from_the_step_generator_and_passes_gradients():
    x = torch.rand(4, 1, 32, 32, requires_grad=True)
    policy = parse_policy("translation,cutout,color")
    a = diff_augment(x, policy, 4, torch.Generator().manual_seed(3))
    b = diff_augment(x, policy, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_an_unknown_augmentation_is_named_in_the_error():
    with pytest.raises(ValueError, match="flip"):
        parse_policy("translation,flip")
    assert parse_policy("") == ()
