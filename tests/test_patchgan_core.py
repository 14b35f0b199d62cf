"""PatchGAN (eqs. 21 and 23): logit-map size, each criterion against its textbook formula,
gradient isolation of the discriminator's loss, learning on toy data, parameter count."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from mixelbo import PatchDiscriminator, PatchGANLoss
from mixelbo import functional as F

CRITERIA = ("bce", "hinge", "lsgan")


# ---------------------------------------------------------------- logit map and size


@pytest.mark.parametrize(
    ("height", "width"),
    [(8, 8), (16, 24), (32, 32), (17, 9), (31, 33), (1, 1), (7, 15), (40, 12), (65, 64)],
)
def test_logit_map_size(height: int, width: int) -> None:
    discriminator = PatchDiscriminator().eval()
    with torch.no_grad():
        logits = discriminator(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 1, math.ceil(height / 8), math.ceil(width / 8))


def test_logit_map_size_follows_strides() -> None:
    discriminator = PatchDiscriminator(1, channels=(4, 4, 4), strides=(2, 1, 3)).eval()
    with torch.no_grad():
        logits = discriminator(torch.randn(1, 1, 25, 12))
    assert logits.shape == (1, 1, math.ceil(math.ceil(25 / 2) / 3), math.ceil(12 / 6))


def test_default_parameter_count_is_about_041_million() -> None:
    """Six 3x3 convs (3 -> 128, 128, 128, 64, 64 -> 1) with biases, batch norm after five."""
    chans = [3, 128, 128, 128, 64, 64, 1]
    convs = sum(9 * c_in * c_out + c_out for c_in, c_out in itertools.pairwise(chans))
    batch_norms = sum(2 * c for c in chans[1:-1])
    count = sum(p.numel() for p in PatchDiscriminator().parameters())
    assert count == convs + batch_norms == 411_073
    assert abs(count - 0.41e6) < 0.005e6
    assert sum(p.numel() for p in PatchDiscriminator(in_channels=1).parameters()) == count - 2304


# ---------------------------------------------------------------- criteria vs textbook


def _logits(seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(3, 1, 5, 4, generator=g, dtype=torch.float64) * scale
    fake = torch.randn(3, 1, 5, 4, generator=g, dtype=torch.float64) * scale
    return real, fake


def test_bce_equals_bce_with_logits_and_minus_log_sigmoid() -> None:
    real, fake = _logits(0)
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones_like(fake), torch.zeros_like(fake)
    generator = F.adversarial_generator_loss(fake, "bce")
    discriminator = F.adversarial_discriminator_loss(real, fake, "bce")
    torch.testing.assert_close(generator, bce(fake, ones))  # H[1, D(x_hat)]
    torch.testing.assert_close(discriminator, bce(real, ones) + bce(fake, zeros))  # eq. 23
    # -log(sigmoid) in float64 NumPy (fine for |logit| <= ~30)
    r, f = real.numpy(), fake.numpy()

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    np.testing.assert_allclose(generator.item(), np.mean(-np.log(sigmoid(f))), rtol=1e-10)
    expected = np.mean(-np.log(sigmoid(r))) + np.mean(-np.log(1.0 - sigmoid(f)))
    np.testing.assert_allclose(discriminator.item(), expected, rtol=1e-10)


def test_bce_by_hand_and_from_logits_at_extremes() -> None:
    assert F.adversarial_generator_loss(torch.zeros(1, 1, 2, 2)).item() == pytest.approx(
        math.log(2)
    )
    # float32 logits of +-100: log(sigmoid(.)) would give -inf; from logits it is exact
    big = torch.full((1, 1, 2, 2), 100.0)
    assert F.adversarial_generator_loss(-big).item() == pytest.approx(100.0)
    assert F.adversarial_generator_loss(big).item() == pytest.approx(0.0, abs=1e-30)
    assert F.adversarial_discriminator_loss(-big, big).item() == pytest.approx(200.0)
    logit = torch.full((1,), -100.0, requires_grad=True)
    F.adversarial_generator_loss(logit).backward()
    assert logit.grad is not None and logit.grad.item() == pytest.approx(-1.0)


def test_hinge_equals_textbook() -> None:
    real, fake = _logits(1)
    r, f = real.numpy(), fake.numpy()
    np.testing.assert_allclose(F.adversarial_generator_loss(fake, "hinge").item(), -f.mean())
    expected = np.mean(np.maximum(0.0, 1.0 - r)) + np.mean(np.maximum(0.0, 1.0 + f))
    np.testing.assert_allclose(
        F.adversarial_discriminator_loss(real, fake, "hinge").item(), expected, rtol=1e-12
    )


def test_lsgan_equals_textbook() -> None:
    real, fake = _logits(2)
    mse = nn.MSELoss()
    ones, zeros = torch.ones_like(fake), torch.zeros_like(fake)
    torch.testing.assert_close(F.adversarial_generator_loss(fake, "lsgan"), mse(fake, ones))
    torch.testing.assert_close(
        F.adversarial_discriminator_loss(real, fake, "lsgan"), mse(real, ones) + mse(fake, zeros)
    )


@pytest.mark.parametrize("criterion", CRITERIA)
def test_patchgan_loss_applies_criterion_to_discriminator_logits(criterion: str) -> None:
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(3, (8, 8, 8), (2, 2, 2), dropout=0.0).double().eval()
    loss = PatchGANLoss(discriminator, loss=criterion)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(3)
    real = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        r, f = discriminator(real).numpy(), discriminator(fake).numpy()
    textbook = {
        "bce": (np.mean(np.log1p(np.exp(-f))), np.mean(np.log1p(np.exp(-r)) + np.log1p(np.exp(f)))),
        "hinge": (-f.mean(), np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f))),
        "lsgan": (np.mean((f - 1) ** 2), np.mean((r - 1) ** 2) + np.mean(f**2)),
    }[criterion]
    np.testing.assert_allclose(loss(fake).item(), textbook[0], rtol=1e-12)
    np.testing.assert_allclose(loss.generator_loss(fake).item(), textbook[0], rtol=1e-12)
    np.testing.assert_allclose(loss.discriminator_loss(real, fake).item(), textbook[1], rtol=1e-12)


# ---------------------------------------------------------------- gradient isolation


def test_discriminator_loss_sends_no_gradient_to_the_fake_producer() -> None:
    torch.manual_seed(0)
    producer = nn.Conv2d(3, 3, 3, padding=1)  # stands in for the VAE's decoder
    loss = PatchGANLoss(PatchDiscriminator(3, (8, 8), (2, 2)))
    real, code = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    loss.discriminator_loss(real, producer(code)).backward()
    assert all(p.grad is None for p in producer.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    # the generator's loss, by contrast, reaches the producer
    loss.zero_grad()
    loss.generator_loss(producer(code)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in producer.parameters())


# ---------------------------------------------------------------- learning


def _smooth(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Low-pass noise (5x5 box blur twice), standardised per image like the white noise."""
    x = torch.randn(n, 1, size + 8, size + 8, generator=generator)
    kernel = torch.full((1, 1, 5, 5), 1 / 25)
    x = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, kernel), kernel)
    return (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)


def test_discriminator_learns_to_separate_noise_from_smooth_images() -> None:
    """White vs smooth noise with equal per-image mean and std: only texture tells them apart.

    The default (paper's) discriminator on 16x16 images. Before training it is at chance
    (0.5); after 30 Adam steps the patch-level accuracy on fresh images must exceed 0.9
    (it reaches 1.0 for seeds 0-3).
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    loss = PatchGANLoss(PatchDiscriminator(in_channels=1))
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def accuracy() -> float:
        loss.eval()
        with torch.no_grad():
            smooth = loss.discriminator(_smooth(32, 16, g))
            noise = loss.discriminator(torch.randn(32, 1, 16, 16, generator=g))
        loss.train()
        return 0.5 * ((smooth > 0).float().mean() + (noise < 0).float().mean()).item()

    before = accuracy()
    for _ in range(30):
        real, fake = _smooth(16, 16, g), torch.randn(16, 1, 16, 16, generator=g)
        optimizer.zero_grad()
        loss.discriminator_loss(real, fake).backward()
        optimizer.step()
    after = accuracy()
    assert before < 0.75, before  # training, not the architecture, separates them
    assert after > 0.9, after
