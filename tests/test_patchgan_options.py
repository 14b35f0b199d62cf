"""Options of the adversarial term (issue 7), each against an independent oracle.

Oracles: float64 NumPy formulas for the criteria, gradients taken separately with
``torch.autograd.grad`` (per sample, in float64) for the adaptive weight and R1, exact
equality with the adversarial-free objective for warm-up, hand-computed pooling sizes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_f
from torch import nn
from torch.nn.utils import parametrize

from mixelbo import (
    AdaptiveAdversarialWeight,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    PatchGANLoss,
    R1Penalty,
    RegularizedELBO,
)
from mixelbo import functional as F

# ---------------------------------------------------------------------------------------
# Criteria against their formulas (NumPy float64), label smoothing included
# ---------------------------------------------------------------------------------------


def np_log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.log1p(np.exp(-x))


def np_generator(fake: np.ndarray, criterion: str) -> float:
    if criterion == "bce":  # H[1, sigmoid(l)] = -log sigmoid(l)
        return float(np.mean(-np_log_sigmoid(fake)))
    if criterion == "hinge":
        return float(-np.mean(fake))
    return float(np.mean((fake - 1.0) ** 2))


def np_discriminator(real: np.ndarray, fake: np.ndarray, criterion: str, s: float) -> float:
    t = 1.0 - s
    if criterion == "bce":  # H[t, sigmoid(r)] + H[0, sigmoid(f)]
        real_part = -(t * np_log_sigmoid(real) + (1 - t) * np_log_sigmoid(-real))
        return float(np.mean(real_part) + np.mean(-np_log_sigmoid(-fake)))
    if criterion == "hinge":
        return float(np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
    return float(np.mean((real - t) ** 2) + np.mean(fake**2))


@pytest.fixture
def logit_maps() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    real = 3 * torch.randn(4, 1, 5, 6, generator=g, dtype=torch.float64)
    fake = 3 * torch.randn(4, 1, 5, 6, generator=g, dtype=torch.float64)
    return real, fake


@pytest.mark.parametrize("criterion", ["bce", "hinge", "lsgan"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_criteria_match_formulas(
    logit_maps: tuple[torch.Tensor, torch.Tensor], criterion: str, smoothing: float
) -> None:
    real, fake = logit_maps
    if criterion == "hinge" and smoothing > 0:
        with pytest.raises(ValueError, match="hinge"):
            F.adversarial_discriminator_loss(real, fake, "hinge", label_smoothing=smoothing)
        return
    d_loss = F.adversarial_discriminator_loss(real, fake, criterion, label_smoothing=smoothing)  # type: ignore[arg-type]
    expected = np_discriminator(real.numpy(), fake.numpy(), criterion, smoothing)
    assert d_loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    g_loss = F.adversarial_generator_loss(fake, criterion)  # type: ignore[arg-type]
    assert g_loss.item() == pytest.approx(np_generator(fake.numpy(), criterion), rel=1e-12)


@pytest.mark.parametrize("criterion", ["bce", "lsgan"])
def test_label_smoothing_is_one_sided_in_the_module(criterion: str) -> None:
    """Only the discriminator's real target moves; the generator's loss is unchanged."""
    critic = nn.Conv2d(3, 1, 3, padding=1).double()
    smoothed = PatchGANLoss(critic, loss=criterion, label_smoothing=0.2)  # type: ignore[arg-type]
    real, fake = torch.randn(2, 3, 8, 8).double(), torch.randn(2, 3, 8, 8).double()
    with torch.no_grad():
        real_logits, fake_logits = critic(real).numpy(), critic(fake).numpy()
        d_loss, g_loss = smoothed.discriminator_loss(real, fake), smoothed.generator_loss(fake)
    expected_d = np_discriminator(real_logits, fake_logits, criterion, 0.2)
    assert d_loss.item() == pytest.approx(expected_d, rel=1e-12)
    assert g_loss.item() == pytest.approx(np_generator(fake_logits, criterion), rel=1e-12)


def test_multiscale_losses_are_the_mean_over_scales(
    logit_maps: tuple[torch.Tensor, torch.Tensor],
) -> None:
    real, fake = logit_maps
    real_maps, fake_maps = [real, real[..., :2, :3]], [fake, 0.5 * fake[..., :2, :3]]
    for criterion in ("bce", "hinge", "lsgan"):
        per_scale = [
            np_discriminator(r.numpy(), f.numpy(), criterion, 0.0)
            for r, f in zip(real_maps, fake_maps, strict=True)
        ]
        d_loss = F.adversarial_discriminator_loss(real_maps, fake_maps, criterion)  # type: ignore[arg-type]
        assert d_loss.item() == pytest.approx(np.mean(per_scale), rel=1e-12)
        g_expected = np.mean([np_generator(f.numpy(), criterion) for f in fake_maps])
        g_loss = F.adversarial_generator_loss(fake_maps, criterion)  # type: ignore[arg-type]
        assert g_loss.item() == pytest.approx(g_expected, rel=1e-12)
    with pytest.raises(ValueError, match="same number of scales"):
        F.adversarial_discriminator_loss(real_maps, fake_maps[:1])
    with pytest.raises(ValueError, match="non-empty"):
        F.adversarial_generator_loss([])


def test_bce_criteria_stay_finite_for_extreme_logits() -> None:
    logits = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    for smoothing in (0.0, 0.1):
        loss = F.adversarial_discriminator_loss(logits, logits, label_smoothing=smoothing)
        assert torch.isfinite(loss)
    assert torch.isfinite(F.adversarial_generator_loss(logits))


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5])
def test_label_smoothing_out_of_range_raises(smoothing: float) -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        PatchGANLoss(label_smoothing=smoothing)


def test_hinge_with_label_smoothing_raises_in_the_module() -> None:
    with pytest.raises(ValueError, match="hinge"):
        PatchGANLoss(loss="hinge", label_smoothing=0.1)


# ---------------------------------------------------------------------------------------
# Adaptive weight (Esser et al. 2021)
# ---------------------------------------------------------------------------------------


class TinyDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.final = nn.Linear(8, 6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.final(self.body(z)))


def decoder_losses(
    decoder: nn.Module, critic: nn.Module, z: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x_hat = decoder(z)
    return (x - x_hat).abs().mean(), -critic(x_hat).mean()


def hand_ratio(decoder: TinyDecoder, critic: nn.Module, z: torch.Tensor, x: torch.Tensor) -> float:
    """||d rec / dW|| / ||d adv / dW||, each from its own forward pass, in NumPy float64."""
    rec, _ = decoder_losses(decoder, critic, z, x)
    (rec_grad,) = torch.autograd.grad(rec, decoder.final.weight)
    _, adv = decoder_losses(decoder, critic, z, x)
    (adv_grad,) = torch.autograd.grad(adv, decoder.final.weight)
    rec_norm = np.linalg.norm(rec_grad.double().numpy().ravel())
    adv_norm = np.linalg.norm(adv_grad.double().numpy().ravel())
    return float(rec_norm / adv_norm)


@pytest.fixture
def tiny_setup() -> tuple[TinyDecoder, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    decoder, critic = TinyDecoder().double(), nn.Linear(6, 1).double()
    return decoder, critic, torch.randn(5, 4).double(), torch.randn(5, 6).double()


def test_adaptive_weight_equals_hand_computed_ratio(
    tiny_setup: tuple[TinyDecoder, nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    decoder, critic, z, x = tiny_setup
    expected = hand_ratio(decoder, critic, z, x)
    rec, adv = decoder_losses(decoder, critic, z, x)
    weight = F.adaptive_adversarial_weight(rec, adv, decoder.final.weight, delta=0.0)
    assert weight.item() == pytest.approx(expected, rel=1e-12)
    assert not weight.requires_grad
    module_weight = AdaptiveAdversarialWeight(delta=0.0)(rec, adv, decoder.final.weight)
    assert module_weight.item() == pytest.approx(expected, rel=1e-12)
    clamped = F.adaptive_adversarial_weight(rec, adv, decoder.final.weight, max_weight=0.01)
    assert clamped.item() == 0.01 < expected


def test_regularized_elbo_uses_the_adaptive_weight(
    tiny_setup: tuple[TinyDecoder, nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    decoder, critic, z, x = tiny_setup
    x_hat = decoder(z)
    mu, logvar = torch.randn(5, 3).double(), 0.1 * torch.randn(5, 3).double()
    elbo = RegularizedELBO.paper(
        beta4=0.5, adversarial=PatchGANLoss(critic), adaptive_weight=AdaptiveAdversarialWeight(0)
    )
    terms = elbo(x, x_hat, mu, logvar, mu, last_layer=decoder.final.weight)
    # independently: rec_loss = beta3 * L1, and the bce generator loss softplus(-D(x_hat))
    rec = (x - decoder(z)).abs().mean()
    (rec_grad,) = torch.autograd.grad(1000.0 * rec, decoder.final.weight)
    adv = torch_f.softplus(-critic(decoder(z))).mean()
    (adv_grad,) = torch.autograd.grad(adv, decoder.final.weight)
    expected_weight = float(np.linalg.norm(rec_grad.numpy()) / np.linalg.norm(adv_grad.numpy()))
    assert terms.adversarial_weight is not None
    assert terms.adversarial_weight.item() == pytest.approx(expected_weight, rel=1e-12)
    expected_total = (
        terms.kl_g + 0.5 * terms.kl_i + 1000.0 * terms.reconstruction
    ) + 0.5 * expected_weight * terms.adversarial
    assert terms.total.item() == pytest.approx(expected_total.item(), rel=1e-12)
    with pytest.raises(ValueError, match="last_layer"):
        elbo(x, x_hat, mu, logvar, mu)
    with pytest.raises(ValueError, match="adversarial term"):
        RegularizedELBO(beta4=0.0, adaptive_weight=True)


def test_adaptive_weight_fp16_is_finite_where_the_naive_norm_overflows() -> None:
    """Finite fp16 gradients (3e4 and 4.5e4 per entry) whose fp16 norms overflow (> 65504)."""
    final = nn.Linear(8, 6).half()
    x_hat = final(torch.ones(3, 8, dtype=torch.float16)).float()
    rec = 1e4 * x_hat.sum()  # d rec / dW[i, j] = 1e4 * sum_b h[b, j] = 3e4
    adv = -1.5e4 * x_hat.sum()  # -4.5e4
    (rec_grad,) = torch.autograd.grad(rec, final.weight, retain_graph=True)
    (adv_grad,) = torch.autograd.grad(adv, final.weight, retain_graph=True)
    assert rec_grad.dtype == torch.float16
    assert torch.isfinite(rec_grad).all() and torch.isfinite(adv_grad).all()
    naive = torch.norm(rec_grad) / (torch.norm(adv_grad) + 1e-4)  # taming's formula
    assert torch.isnan(naive)  # inf / inf: the failure this option prevents
    weight = F.adaptive_adversarial_weight(rec, adv, final.weight)
    rec_norm = np.linalg.norm(rec_grad.double().numpy())
    adv_norm = np.linalg.norm(adv_grad.double().numpy())
    assert weight.dtype == torch.float32
    assert weight.item() == pytest.approx(rec_norm / (adv_norm + 1e-4), rel=1e-6)
    assert weight.item() == pytest.approx(2 / 3, rel=1e-3)  # 45000 rounds to 44992 in fp16


def test_adaptive_weight_under_bf16_autocast_matches_fp32(
    tiny_setup: tuple[TinyDecoder, nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    decoder, critic, z, x = (t.float() for t in tiny_setup)
    rec, adv = decoder_losses(decoder, critic, z, x)
    reference = F.adaptive_adversarial_weight(rec, adv, decoder.final.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec, adv = decoder_losses(decoder, critic, z, x)
        weight = F.adaptive_adversarial_weight(rec, adv, decoder.final.weight)
    assert weight.dtype == torch.float32 and torch.isfinite(weight)
    assert weight.item() == pytest.approx(reference.item(), rel=0.05)


def test_adaptive_weight_zero_and_nonfinite_adversarial_gradient(
    tiny_setup: tuple[TinyDecoder, nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    decoder, critic, z, x = tiny_setup
    weight_param = decoder.final.weight
    rec, _ = decoder_losses(decoder, critic, z, x)
    (rec_grad,) = torch.autograd.grad(rec, weight_param, retain_graph=True)
    rec_norm = float(np.linalg.norm(rec_grad.numpy()))
    unrelated = critic.weight.sum()  # does not depend on the decoder: zero gradient
    # delta > 0: the denominator is delta, the ratio clamps
    w = F.adaptive_adversarial_weight(rec, unrelated, weight_param, delta=1.0)
    assert w.item() == pytest.approx(rec_norm, rel=1e-12)
    w = F.adaptive_adversarial_weight(rec, unrelated, weight_param)  # delta = 1e-4
    assert w.item() == pytest.approx(min(rec_norm / 1e-4, 1e4), rel=1e-12)
    w = F.adaptive_adversarial_weight(rec, unrelated, weight_param, max_weight=100.0)
    assert w.item() == 100.0
    # delta = 0: x / 0 is not finite -> the fallback, never NaN
    for fallback in (0.0, 2.5):
        w = F.adaptive_adversarial_weight(
            rec, unrelated, weight_param, delta=0.0, fallback=fallback
        )
        assert w.item() == fallback
    nan_adv = float("nan") * decoder(z).sum()
    w = F.adaptive_adversarial_weight(rec, nan_adv, weight_param, fallback=1.0)
    assert w.item() == 1.0
    with torch.no_grad():  # validation: no gradient to measure
        rec, adv = decoder_losses(decoder, critic, z, x)
        assert F.adaptive_adversarial_weight(rec, adv, weight_param).item() == 0.0


def test_adaptive_weight_bad_arguments() -> None:
    w = torch.ones(3, requires_grad=True)
    loss = w.sum()
    with pytest.raises(ValueError, match="requires_grad"):
        F.adaptive_adversarial_weight(loss, loss, torch.ones(3))
    with pytest.raises(ValueError, match="scalar"):
        F.adaptive_adversarial_weight(w * 2, loss, w)
    with pytest.raises(ValueError, match="delta"):
        AdaptiveAdversarialWeight(delta=-1.0)
    with pytest.raises(ValueError, match="max_weight"):
        AdaptiveAdversarialWeight(max_weight=0.0)
    with pytest.raises(ValueError, match="fallback"):
        AdaptiveAdversarialWeight(fallback=-1.0)


# ---------------------------------------------------------------------------------------
# R1 gradient penalty (Mescheder et al. 2018), lazy regularization
# ---------------------------------------------------------------------------------------


def small_critic() -> PatchDiscriminator:
    return PatchDiscriminator(3, channels=(4, 4), strides=(2, 1), dropout=0.0, norm="none")


def per_sample_r1(critic: nn.Module, real: torch.Tensor, gamma: float) -> float:
    """gamma/2 * mean_i ||d sum(D(x_i)) / d x_i||^2, one image at a time, in float64."""
    squared_norms = []
    for image in real:
        image = image[None].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic(image).sum(), image)
        squared_norms.append(float((gradient.double() ** 2).sum()))
    return 0.5 * gamma * float(np.mean(squared_norms))


def test_r1_equals_independent_per_sample_gradients() -> None:
    critic = small_critic().double()
    real, fake = torch.randn(3, 3, 8, 8).double(), torch.randn(3, 3, 8, 8).double()
    expected = per_sample_r1(critic, real, gamma=0.7)
    x = real.clone().requires_grad_(True)
    assert F.r1_penalty(critic(x), x, gamma=0.7).item() == pytest.approx(expected, rel=1e-12)
    adversarial = PatchGANLoss(critic, r1_gamma=0.7, r1_interval=4)
    for step, factor in ((8, 4.0), (9, 0.0), (12, 4.0)):
        terms = adversarial.discriminator_terms(real, fake, step=step)
        assert terms.r1.item() == pytest.approx(factor * expected, rel=1e-12)
        assert terms.total.item() == pytest.approx(terms.criterion.item() + factor * expected)
    with pytest.raises(ValueError, match="step"):
        adversarial.discriminator_loss(real, fake)  # interval 4 needs the step


def test_r1_over_scales_sums_the_maps() -> None:
    critic = MultiScaleDiscriminator(
        3, num_scales=2, channels=(4,), strides=(2,), dropout=0.0, norm="none"
    )
    critic = critic.double()
    real = torch.randn(2, 3, 8, 8).double()
    x = real.clone().requires_grad_(True)
    maps = critic(x)
    squared = []
    for image in real:  # independent: the sum over every scale's map, per image
        image = image[None].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(sum(m.sum() for m in critic(image)), image)
        squared.append(float((gradient**2).sum()))
    assert F.r1_penalty(maps, x).item() == pytest.approx(0.5 * np.mean(squared), rel=1e-12)


def test_r1_is_differentiable_in_the_discriminator_parameters() -> None:
    """create_graph=True: gradcheck of R1 w.r.t. a discriminator weight (float64)."""
    critic = PatchDiscriminator(3, channels=(2, 2), strides=(2, 1), dropout=0.0, norm="none")
    critic = critic.double()
    real = torch.randn(2, 3, 4, 4).double()
    conv = critic.layers[0]
    assert isinstance(conv, nn.Conv2d)

    def penalty(weight: torch.Tensor) -> torch.Tensor:
        x = real.clone().requires_grad_(True)
        hidden = torch_f.conv2d(x, weight, conv.bias, stride=conv.stride, padding=1)
        logits = critic.layers[1:](hidden)
        return F.r1_penalty(logits, x)

    weight = conv.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(penalty, (weight,), eps=1e-6, atol=1e-6)


def test_r1_under_bf16_autocast_is_float32_and_close() -> None:
    critic = small_critic()
    real = torch.randn(3, 3, 8, 8)
    reference = per_sample_r1(critic, real, gamma=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = real.clone().requires_grad_(True)
        penalty = F.r1_penalty(critic(x), x)
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(reference, rel=0.05)


def test_r1_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma"):
        R1Penalty(gamma=-1.0)
    with pytest.raises(ValueError, match="interval"):
        R1Penalty(interval=0)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="require grad"):
        F.r1_penalty(x.sum(1), x)
    with pytest.raises(ValueError, match="do not depend"):
        F.r1_penalty(torch.randn(2, requires_grad=True), x.requires_grad_(True))


# ---------------------------------------------------------------------------------------
# Warm-up: exact zero before start_step, explicit step
# ---------------------------------------------------------------------------------------


def decoder_gradients(elbo: RegularizedELBO, decoder: nn.Module, step: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    z, x = torch.randn(4, 8), torch.rand(4, 3, 8, 8)
    x_hat = decoder(z).view(4, 3, 8, 8)
    mu, logvar = z[:, :4], torch.zeros(4, 4)
    terms = elbo(x, x_hat, mu, logvar, mu, step=step)
    return list(torch.autograd.grad(terms.total, list(decoder.parameters())))


def test_warmup_gives_exactly_zero_adversarial_gradient_before_start_step() -> None:
    torch.manual_seed(0)
    decoder = nn.Linear(8, 3 * 8 * 8)
    critic = PatchDiscriminator(3, channels=(4,), strides=(2,), dropout=0.0)
    with_adversarial = RegularizedELBO.paper(adversarial=PatchGANLoss(critic, start_step=5))
    without = RegularizedELBO.paper(beta4=0.0)
    for step in (0, 4):
        grads = decoder_gradients(with_adversarial, decoder, step)
        reference = decoder_gradients(without, decoder, step)
        assert all(torch.equal(g, r) for g, r in zip(grads, reference, strict=True))
    assert all(p.grad is None for p in critic.parameters())  # critic never called
    grads = decoder_gradients(with_adversarial, decoder, 5)
    reference = decoder_gradients(without, decoder, 5)
    assert any((g - r).abs().max() > 0 for g, r in zip(grads, reference, strict=True))


def test_warmup_blocks_nan_from_the_discriminator() -> None:
    critic = nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        critic.weight.fill_(float("nan"))
    adversarial = PatchGANLoss(critic, start_step=10)
    fake = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = (fake - 1).abs().mean() + 100 * adversarial.generator_loss(fake, step=9)
    (gradient,) = torch.autograd.grad(loss, fake)
    assert torch.isfinite(gradient).all() and loss.item() == (fake - 1).abs().mean().item()
    assert torch.isnan(adversarial.generator_loss(fake, step=10))  # NaN critic once active


def test_discriminator_warmup_trains_the_critic_before_the_generator_sees_it() -> None:
    critic = PatchDiscriminator(3, channels=(4,), strides=(2,), dropout=0.0)
    adversarial = PatchGANLoss(critic, start_step=100, discriminator_start_step=40)
    real, fake = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert not adversarial.discriminator_active(39) and adversarial.discriminator_active(40)
    assert not adversarial.generator_active(99) and adversarial.generator_active(100)
    loss = adversarial.discriminator_loss(real, fake, step=39)
    assert loss.item() == 0.0
    loss.backward()  # accepted by backward(), reaches no parameter
    assert all(p.grad is None for p in critic.parameters())
    adversarial.discriminator_loss(real, fake, step=40).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def test_warmup_options_validate_and_need_the_step() -> None:
    with pytest.raises(ValueError, match="discriminator_start_step must not exceed"):
        PatchGANLoss(start_step=10, discriminator_start_step=20)
    with pytest.raises(ValueError, match=">= 0"):
        PatchGANLoss(start_step=-1)
    adversarial = PatchGANLoss(start_step=10)
    fake = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="step"):
        adversarial.generator_loss(fake)
    with pytest.raises(ValueError, match="step must be an int"):
        adversarial.generator_loss(fake, step=1.5)  # type: ignore[arg-type]
    assert PatchGANLoss().generator_active(None)  # no warm-up: no step needed
    assert adversarial.generator_active(np.int64(10))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Discriminator architecture options
# ---------------------------------------------------------------------------------------


def avg_pool_numpy(x: np.ndarray) -> np.ndarray:
    """3x3 average, stride 2, padding 1, padding excluded from the count (by hand)."""
    height, width = x.shape[-2:]
    out = np.zeros((*x.shape[:-2], math.ceil(height / 2), math.ceil(width / 2)))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            rows = slice(max(2 * i - 1, 0), min(2 * i + 2, height))
            cols = slice(max(2 * j - 1, 0), min(2 * j + 2, width))
            out[..., i, j] = x[..., rows, cols].mean(axis=(-2, -1))
    return out


@pytest.mark.parametrize(("height", "width"), [(64, 64), (70, 50), (33, 17), (256, 128)])
def test_multiscale_map_sizes(height: int, width: int) -> None:
    critic = MultiScaleDiscriminator(3, num_scales=3, channels=(2, 2, 2), strides=(2, 2, 2))
    maps = critic(torch.randn(1, 3, height, width))
    size = (height, width)
    for logit_map in maps:
        assert logit_map.shape == (1, 1, math.ceil(size[0] / 8), math.ceil(size[1] / 8))
        size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))


def test_multiscale_discriminator_sees_the_pooled_pyramid() -> None:
    critic = MultiScaleDiscriminator(3, num_scales=3, channels=(2,), strides=(1,)).eval()
    x = torch.randn(2, 3, 9, 6)
    maps = critic(x)
    pooled = x.numpy().astype(np.float64)
    for scale, discriminator in enumerate(critic.discriminators):
        expected = discriminator(torch.from_numpy(pooled).float())
        torch.testing.assert_close(maps[scale], expected, rtol=1e-5, atol=1e-6)
        pooled = avg_pool_numpy(pooled)
    # usable wherever a discriminator is: the loss is the mean over scales
    adversarial = PatchGANLoss(critic)
    expected_loss = np.mean([np_generator(m.detach().double().numpy(), "bce") for m in maps])
    assert adversarial.generator_loss(x).item() == pytest.approx(expected_loss, rel=1e-6)
    with pytest.raises(ValueError, match="num_scales"):
        MultiScaleDiscriminator(num_scales=0)


@pytest.mark.parametrize(
    ("norm", "layer_type"),
    [
        ("batch", nn.BatchNorm2d),
        ("instance", nn.InstanceNorm2d),
        ("group", nn.GroupNorm),
        ("none", nn.Identity),
    ],
)
def test_norm_options_build_and_run(norm: str, layer_type: type[nn.Module]) -> None:
    critic = PatchDiscriminator(norm=norm, channels=(16, 24, 8), strides=(2, 2, 2))  # type: ignore[arg-type]
    norms = [critic.layers[i] for i in range(1, len(critic.layers) - 1, 4)]
    assert len(norms) == 3 and all(type(layer) is layer_type for layer in norms)
    if norm == "group":  # gcd(32, channels) groups
        assert [layer.num_groups for layer in norms] == [16, 8, 8]  # type: ignore[union-attr]
    logits = critic(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 1, 4, 4) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="norm"):
        PatchDiscriminator(norm="layer")  # type: ignore[arg-type]


def test_default_discriminator_is_the_papers() -> None:
    critic = PatchDiscriminator()
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128, 64, 64, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in critic.modules()) == 5
    assert sum(p.numel() for p in critic.parameters()) == 411_073  # about 0.41 M


def test_width_multiplier_scales_hidden_channels() -> None:
    critic = PatchDiscriminator(width=0.5)
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 64, 32, 32, 1]
    with pytest.raises(ValueError, match="width"):
        PatchDiscriminator(width=0.0)
    with pytest.raises(ValueError, match="dropout"):
        PatchDiscriminator(dropout=1.0)


def test_spectral_norm_is_present_and_bounds_every_conv() -> None:
    critic = PatchDiscriminator(norm="none", spectral_norm=True, channels=(8, 8), strides=(2, 1))
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    assert all(parametrize.is_parametrized(conv, "weight") for conv in convs)
    critic.train()
    for _ in range(20):  # one power iteration per training forward
        critic(torch.randn(2, 3, 16, 16))
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    plain = PatchDiscriminator()
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())


def test_sync_batchnorm_conversion_is_one_call() -> None:
    """The documented DDP recipe; on CPU without a process group we check the layer types."""
    critic = PatchDiscriminator()
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(critic)
    layers = list(converted.modules())
    assert sum(type(m) is nn.SyncBatchNorm for m in layers) == 5
    assert not any(type(m) is nn.BatchNorm2d for m in layers)
    multi = torch.nn.SyncBatchNorm.convert_sync_batchnorm(MultiScaleDiscriminator(num_scales=2))
    assert sum(type(m) is nn.SyncBatchNorm for m in multi.modules()) == 10


# ---------------------------------------------------------------------------------------
# CUDA variants (skipped without a GPU)
# ---------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_adaptive_weight_and_r1_under_fp16_autocast_cuda() -> None:
    torch.manual_seed(0)
    decoder, critic = TinyDecoder().cuda(), nn.Linear(6, 1).cuda()
    z, x = torch.randn(5, 4, device="cuda"), torch.randn(5, 6, device="cuda")
    rec, adv = decoder_losses(decoder, critic, z, x)
    reference = F.adaptive_adversarial_weight(rec, adv, decoder.final.weight)
    with torch.autocast("cuda", dtype=torch.float16):
        rec, adv = decoder_losses(decoder, critic, z, x)
        weight = F.adaptive_adversarial_weight(rec, adv, decoder.final.weight)
    assert weight.dtype == torch.float32 and torch.isfinite(weight)
    assert weight.item() == pytest.approx(reference.item(), rel=0.02)
    patch_critic = small_critic().cuda()
    real = torch.randn(3, 3, 8, 8, device="cuda")
    reference_r1 = per_sample_r1(patch_critic, real, gamma=1.0)
    with torch.autocast("cuda", dtype=torch.float16):
        x_real = real.clone().requires_grad_(True)
        penalty = F.r1_penalty(patch_critic(x_real), x_real)
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(reference_r1, rel=0.02)


# ---------------------------------------------------------------------------------------
# The documentation page's code runs as written
# ---------------------------------------------------------------------------------------


def test_patchgan_page_code_runs() -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "patchgan.md"
    blocks = re.findall(r"^```python[^\n]*\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"patchgan.md block {index}", "exec"), namespace)


def test_options_trace_with_fullgraph_compile() -> None:
    """Warm-up, smoothing and multi-scale trace in one graph (R1/adaptive use autograd.grad)."""
    critic = MultiScaleDiscriminator(3, num_scales=2, channels=(4,), strides=(2,), dropout=0.0)
    adversarial = PatchGANLoss(critic, label_smoothing=0.1, start_step=3).eval()
    real, fake = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    generator = torch.compile(adversarial.generator_loss, fullgraph=True, backend="eager")
    discriminator = torch.compile(adversarial.discriminator_loss, fullgraph=True, backend="eager")
    assert generator(fake, 2).item() == 0.0
    torch.testing.assert_close(generator(fake, 3), adversarial.generator_loss(fake, 3))
    torch.testing.assert_close(
        discriminator(real, fake, 3), adversarial.discriminator_loss(real, fake, 3)
    )
