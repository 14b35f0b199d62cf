"""Evaluation metrics against hand-computed values and statistical facts (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mixelbo_reference.metrics import (
    bimodality_test,
    fit_two_gaussians,
    l1_error,
    probe_factors,
    psnr,
    sarle_coefficient,
    ssim,
)

# ---------------------------------------------------------------------------------- L1, PSNR


def test_l1_is_the_mean_absolute_error_per_image() -> None:
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[[[1.0, -1.0], [0.5, 0.5]]], [[[0.0, 0.0], [0.0, 0.2]]]])
    # image 0: (1 + 1 + 0.5 + 0.5) / 4 = 0.75; image 1: 0.2 / 4 = 0.05
    assert l1_error(x, x_hat).tolist() == pytest.approx([0.75, 0.05])


def test_psnr_of_a_known_mse() -> None:
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    x_hat = torch.full_like(x, 0.1)  # MSE = 0.01, range 2: 10 log10(4 / 0.01) = 26.0206 dB
    # torchmetrics converts 10 / ln(10) to float32: about 1e-6 dB off the float64 value
    assert psnr(x, x_hat).item() == pytest.approx(10 * math.log10(400), abs=1e-5)
    assert psnr(x, x_hat, data_range=1.0).item() == pytest.approx(20.0, abs=1e-5)
    assert psnr(x, x).item() == math.inf


# ---------------------------------------------------------------------------------- SSIM


def _ssim_by_loops(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """Wang et al. 2004 spelled out: every valid 11x11 window, weighted sums, one channel."""
    offsets = np.arange(11) - 5
    w = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for top in range(a.shape[0] - 10):
        for left in range(a.shape[1] - 10):
            pa, pb = a[top : top + 11, left : left + 11], b[top : top + 11, left : left + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append(
                (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return float(np.mean(values))


def test_ssim_of_identical_images_is_one() -> None:
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_ssim_of_two_flat_images_is_the_luminance_term() -> None:
    # no variance: the structure term is C2 / C2 = 1, luminance (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.5, 0.3, (0.01 * 2) ** 2
    x = torch.full((1, 3, 12, 12), a, dtype=torch.float64)
    x_hat = torch.full((1, 3, 12, 12), b, dtype=torch.float64)
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)  # = 0.30040 / 0.34040 = 0.88249
    assert ssim(x, x_hat).item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.882491, abs=1e-6)


def test_ssim_of_a_negated_zero_mean_pattern() -> None:
    # a +-0.5 checkerboard against its negation: every 11x11 window has local mean m and -m
    # with |m| small, variance v each and covariance -v, so SSIM is near (C2 - 2v)/(2v + C2)
    board = torch.tensor(
        [[(-1.0) ** (i + j) * 0.5 for j in range(11)] for i in range(11)], dtype=torch.float64
    )
    x = board.expand(1, 1, 11, 11)
    value = ssim(x, -x).item()
    expected = _ssim_by_loops(board.double().numpy(), -board.double().numpy())
    assert value == pytest.approx(expected, abs=1e-12)
    assert value < -0.9  # anti-correlated structure


def test_ssim_matches_an_explicit_window_loop() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 2, 14, 13, generator=generator, dtype=torch.float64) * 2 - 1
    x_hat = (x + 0.3 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(-1, 1)
    expected = [
        np.mean([_ssim_by_loops(x[n, c].numpy(), x_hat[n, c].numpy()) for c in range(2)])
        for n in range(2)
    ]
    assert ssim(x, x_hat).tolist() == pytest.approx(expected, abs=1e-10)


def test_ssim_of_float32_images_is_within_float32_rounding_of_the_window_loop() -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    x_hat = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    expected = [
        np.mean(
            [
                _ssim_by_loops(x[n, c].double().numpy(), x_hat[n, c].double().numpy())
                for c in range(3)
            ]
        )
        for n in range(2)
    ]
    value = ssim(x, x_hat)
    assert value.dtype == torch.float64
    assert value.tolist() == pytest.approx(expected, abs=1e-6)


def test_metrics_reject_bad_input() -> None:
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="x_hat must have the shape"):
        psnr(x, torch.zeros(1, 3, 16, 15))
    with pytest.raises(ValueError, match="window_size=11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        l1_error(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))


# ---------------------------------------------------------------------------------- bimodality


def _mixture(rng: np.random.Generator, n: int, columns: int, shift: float, std: float, w: float):
    pick = rng.random((n, columns)) < w
    return np.where(
        pick, rng.normal(-shift, std, (n, columns)), rng.normal(shift, std, (n, columns))
    )


@pytest.mark.parametrize(
    "name",
    ["normal", "laplace", "student_t3", "exponential", "lognormal", "close_mixture"],
)
def test_unimodal_samples_are_not_bimodal(name: str) -> None:
    rng = np.random.default_rng(11)
    n, columns = 400, 20
    samples = {
        "normal": lambda: rng.normal(size=(n, columns)),
        "laplace": lambda: rng.laplace(size=(n, columns)),
        "student_t3": lambda: rng.standard_t(3, size=(n, columns)),
        "exponential": lambda: rng.exponential(size=(n, columns)),
        "lognormal": lambda: rng.lognormal(0.0, 0.8, size=(n, columns)),
        # equal halves of N(-0.3, 0.5^2) and N(0.3, 0.5^2): separation D = 1.2 < 2, which
        # for equal weights and variances is provably a unimodal density
        "close_mixture": lambda: _mixture(rng, n, columns, 0.3, 0.5, 0.5),
    }[name]()
    assert bimodality_test(samples).count == 0


def test_uniform_samples_are_rarely_bimodal() -> None:
    # flat, not two-peaked; the boundary case of every bimodality statistic
    samples = np.random.default_rng(5).uniform(-1, 1, size=(400, 20))
    assert bimodality_test(samples).count <= 2


@pytest.mark.parametrize("weight", [0.5, 0.2, 0.1])
def test_separated_mixtures_are_bimodal_with_modes_at_plus_minus_one(weight: float) -> None:
    samples = _mixture(np.random.default_rng(7), 400, 20, 1.0, 0.3, weight)
    result = bimodality_test(samples)
    assert result.count == 20
    assert np.abs(result.means - np.array([-1.0, 1.0])).max() < 0.15
    assert np.abs(result.weights[:, 0] - weight).max() < 0.07


def test_bimodality_flags_only_the_bimodal_columns() -> None:
    rng = np.random.default_rng(2)
    columns = [
        rng.normal(size=400),
        _mixture(rng, 400, 1, 1.0, 0.3, 0.5)[:, 0],
        rng.normal(size=400),
    ]
    assert bimodality_test(np.stack(columns, axis=1)).bimodal.tolist() == [False, True, False]
    assert bimodality_test(torch.from_numpy(columns[1])).bimodal.tolist() == [True]


def test_constant_coordinate_is_not_bimodal() -> None:
    assert bimodality_test(np.ones((50, 2))).count == 0


def test_two_gaussian_fit_recovers_a_known_mixture() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    pick = rng.random(n) < 0.3
    samples = np.where(pick, rng.normal(-2.0, 0.5, n), rng.normal(1.0, 1.0, n))
    means, stds, weights, _ = fit_two_gaussians(samples)
    assert means[0] == pytest.approx([-2.0, 1.0], abs=0.05)
    assert stds[0] == pytest.approx([0.5, 1.0], abs=0.05)
    assert weights[0] == pytest.approx([0.3, 0.7], abs=0.02)


def test_sarle_coefficient_known_values() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    # population values: normal 1/3, uniform 1/(9/5) = 5/9, two equal spikes 1/(-2 + 3) = 1
    assert sarle_coefficient(rng.normal(size=n))[0] == pytest.approx(1 / 3, abs=0.01)
    assert sarle_coefficient(rng.uniform(size=n))[0] == pytest.approx(5 / 9, abs=0.01)
    spikes = np.repeat([-1.0, 1.0], n // 2)
    assert sarle_coefficient(spikes)[0] == pytest.approx(1.0, abs=1e-3)


def test_bimodality_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 8 samples"):
        bimodality_test(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        bimodality_test(np.full((10, 1), np.nan))
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, D\)"):
        bimodality_test(np.zeros((10, 2, 2)))


# ---------------------------------------------------------------------------------- probe


def test_probe_r2_of_a_linear_factor_with_known_noise() -> None:
    rng = np.random.default_rng(0)
    n, dims = 6000, 8
    latents = rng.normal(size=(n, dims))
    weights = rng.normal(size=dims)
    signal = latents @ (weights / np.linalg.norm(weights))  # variance 1
    noisy = signal + rng.normal(size=n)  # noise variance 1: population R^2 = 1 / 2
    unrelated = rng.normal(size=n)
    scores = probe_factors(
        latents, np.stack([noisy, unrelated], 1), ["noisy", "unrelated"], ["continuous"] * 2
    )
    assert scores[0].metric == "r2" and scores[0].score == pytest.approx(0.5, abs=0.03)
    assert abs(scores[1].score) < 0.02


def test_probe_accuracy_of_a_discrete_factor() -> None:
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(3000, 4))
    labels = latents[:, :3].argmax(axis=1)  # three classes, each a wedge of latent space
    (score,) = probe_factors(latents, labels, ["wedge"], ["discrete"])
    majority = np.bincount(labels).max() / len(labels)
    assert score.metric == "accuracy" and score.score > 0.8
    assert score.baseline == pytest.approx(majority, abs=0.03)
    separable = (latents[:, 1] > 0).astype(float)
    (clean,) = probe_factors(latents, separable, ["sign"], ["discrete"])
    assert clean.score > 0.97


def test_probe_treats_a_circular_factor_through_its_angle() -> None:
    rng = np.random.default_rng(2)
    latents = rng.normal(size=(4000, 3))
    hue = (0.98 + 0.03 * latents[:, 0]) % 1.0  # straddles the wrap at 1 -> 0
    linear, circular = probe_factors(
        latents, np.stack([hue, hue], 1), ["hue", "hue2"], ["continuous"] * 2, periods={"hue2": 1.0}
    )
    assert linear.score < 0.6  # the jump from 0.99 to 0.00 defeats a linear fit
    assert circular.kind == "circular" and circular.score > 0.95


def test_probe_rejects_mismatched_input() -> None:
    with pytest.raises(ValueError, match="one row per latent"):
        probe_factors(np.zeros((10, 2)), np.zeros((9, 1)), ["a"], ["continuous"])
    with pytest.raises(ValueError, match="one entry per factor"):
        probe_factors(np.zeros((10, 2)), np.zeros((10, 1)), ["a", "b"], ["continuous"])
    with pytest.raises(ValueError, match="train_fraction"):
        probe_factors(np.zeros((10, 2)), np.zeros(10), ["a"], ["continuous"], train_fraction=1)
