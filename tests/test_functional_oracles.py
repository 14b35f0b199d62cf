"""mixelbo.functional against independent oracles: hand-computed values, float64 NumPy
re-derivations of eqs. 10 and 17-20 (tests/oracles.py), torch.distributions, and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracles import (
    eq10_elements,
    eq17_mean,
    eq18_variance,
    eq19_kl_g,
    eq20_elements,
    f64,
    means_variance,
    mixture_variance,
    reduce_dims,
    reduce_elements,
    torch_normal_kl,
)
from torch.distributions import Normal, kl_divergence

from mixelbo import functional as F

DIM_REDUCTIONS = ("sum", "mean", "none")
ELEMENT_REDUCTIONS = ("sum", "batchmean", "mean", "none")
VARIANCES = ("sample", "means", "mixture")


def _posterior(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=dtype) * 1.5 + 0.3
    logvar = torch.randn(n, d, generator=g, dtype=dtype) - 0.5
    z = mu + torch.randn(n, d, generator=g, dtype=dtype) * (0.5 * logvar).exp()
    return mu, logvar, z


def _oracle_variance(variance: str, mu: np.ndarray, logvar: np.ndarray, z: np.ndarray):
    if variance == "sample":
        return eq18_variance(z, mu)
    if variance == "means":
        return means_variance(mu)
    return mixture_variance(mu, logvar)


# ---------------------------------------------------------------- hand-computed values


def test_batch_moments_by_hand() -> None:
    mu = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    z = torch.tensor([[0.0], [5.0]], dtype=torch.float64)
    logvar = torch.log(torch.tensor([[1.0], [3.0]], dtype=torch.float64))
    mean, var = F.batch_moments(mu, logvar, z, variance="sample")
    assert mean.tolist() == [2.0]
    assert var.tolist() == [6.5]  # ((0 - 2)^2 + (5 - 2)^2) / 2, centred on mean(mu) = 2
    assert F.batch_moments(mu, logvar, z, variance="means")[1].tolist() == [1.0]
    # mixture: mean of sigma^2 (1 + 3) / 2 = 2 plus spread of the means 1
    torch.testing.assert_close(
        F.batch_moments(mu, logvar, variance="mixture")[1],
        torch.tensor([3.0], dtype=torch.float64),
    )


def test_mixture_kl_by_hand() -> None:
    mu = torch.tensor([[1.0, -1.0], [3.0, 1.0]], dtype=torch.float64)
    z = torch.tensor([[0.0, -1.0], [5.0, 1.0]], dtype=torch.float64)
    # dim 0: mean 2, var 6.5; dim 1: mean 0, var 1 (exactly the prior: zero KL)
    expected_dim0 = 0.5 * (6.5 + 4.0 - 1.0 - math.log(6.5))
    got = F.mixture_kl(mu, None, z, variance="sample", reduction="none")
    torch.testing.assert_close(got, torch.tensor([expected_dim0, 0.0], dtype=torch.float64))
    assert got[1].item() == 0.0
    torch.testing.assert_close(
        F.mixture_kl(mu, None, z, variance="sample"),
        torch.tensor(expected_dim0, dtype=torch.float64),
    )
    torch.testing.assert_close(
        F.mixture_kl(mu, None, z, variance="sample", reduction="mean"),
        torch.tensor(expected_dim0 / 2, dtype=torch.float64),
    )


def test_individual_variance_kl_by_hand() -> None:
    # sigma^2 in {1, 2, 1/2, 1}: elements 0, 1 - ln 2, ln 2 - 1/2, 0; their sum is exactly 1/2
    logvar = torch.log(torch.tensor([[1.0, 2.0], [0.5, 1.0]], dtype=torch.float64))
    expected = {"sum": 0.5, "batchmean": 0.25, "mean": 0.125}
    for reduction, value in expected.items():
        got = F.individual_variance_kl(logvar, reduction=reduction)
        assert got.item() == pytest.approx(value, rel=1e-14)
        got_kl = F.individual_variance_kl(logvar, form="kl", reduction=reduction)
        assert got_kl.item() == pytest.approx(value / 2, rel=1e-14)
    none = F.individual_variance_kl(logvar, reduction="none")
    torch.testing.assert_close(
        none,
        torch.tensor([[0.0, 1 - math.log(2)], [math.log(2) - 0.5, 0.0]], dtype=torch.float64),
    )


def test_gaussian_kl_by_hand() -> None:
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    logvar = torch.zeros(2, 2, dtype=torch.float64)
    # elements mu^2 / 2: 0.5, 0, 0, 2
    assert F.gaussian_kl(mu, logvar, reduction="sum").item() == 2.5
    assert F.gaussian_kl(mu, logvar).item() == 1.25  # batchmean is the default
    assert F.gaussian_kl(mu, logvar, reduction="mean").item() == 0.625


def test_diagnostics_by_hand() -> None:
    mu = torch.tensor([[0.0, -1.0, 0.0], [0.0, 1.0, 0.4]])
    assert F.active_units(mu).item() == 2  # population variances 0, 1, 0.04 against 0.01
    assert F.active_units(mu, threshold=0.05).item() == 1
    logvar = torch.log(torch.tensor([[1.0, 4.0], [0.25, 1.0]]))
    assert F.mean_posterior_sigma(logvar).item() == pytest.approx((1 + 2 + 0.5 + 1) / 4)
    kl = F.kl_per_dim(torch.tensor([[0.0, 2.0], [0.0, 0.0]]), torch.zeros(2, 2))
    torch.testing.assert_close(kl, torch.tensor([0.0, 1.0]))  # dim 1: (2 + 0) / 2 samples


# ---------------------------------------------------------------- NumPy oracles (eqs. 10, 17-20)


@pytest.mark.parametrize("variance", VARIANCES)
def test_batch_moments_match_numpy(variance: str) -> None:
    mu, logvar, z = _posterior(37, 6)
    mean, var = F.batch_moments(mu, logvar, z, variance=variance)
    np.testing.assert_allclose(mean.numpy(), eq17_mean(f64(mu)), rtol=1e-12, atol=1e-14)
    expected = _oracle_variance(variance, f64(mu), f64(logvar), f64(z))
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-11)


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("reduction", DIM_REDUCTIONS)
def test_mixture_kl_matches_numpy(variance: str, reduction: str) -> None:
    mu, logvar, z = _posterior(29, 5, seed=1)
    got = F.mixture_kl(mu, logvar, z, variance=variance, reduction=reduction)
    m, lv, zz = f64(mu), f64(logvar), f64(z)
    per_dim = eq19_kl_g(eq17_mean(m), _oracle_variance(variance, m, lv, zz))
    np.testing.assert_allclose(got.numpy(), reduce_dims(per_dim, reduction), rtol=1e-11)


@pytest.mark.parametrize("form", ["paper", "kl"])
@pytest.mark.parametrize("reduction", ELEMENT_REDUCTIONS)
def test_individual_variance_kl_matches_numpy(form: str, reduction: str) -> None:
    _, logvar, _ = _posterior(11, 7, seed=2)
    got = F.individual_variance_kl(logvar, form=form, reduction=reduction)
    elements = eq20_elements(f64(logvar)) * (0.5 if form == "kl" else 1.0)
    np.testing.assert_allclose(got.numpy(), reduce_elements(elements, reduction), rtol=1e-11)


@pytest.mark.parametrize("reduction", ELEMENT_REDUCTIONS)
def test_gaussian_kl_matches_numpy(reduction: str) -> None:
    mu, logvar, _ = _posterior(13, 4, seed=3)
    got = F.gaussian_kl(mu, logvar, reduction=reduction)
    expected = reduce_elements(eq10_elements(f64(mu), f64(logvar)), reduction)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11)


def test_spatial_pattern_matches_numpy() -> None:
    """``"b c h w -> (b h w) c"``: every spatial position is a sample, channels are dims."""
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64) * 0.5
    z = mu + torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    pattern = "b c h w -> (b h w) c"

    def flat(t: torch.Tensor) -> np.ndarray:
        return f64(t).transpose(0, 2, 3, 1).reshape(-1, 4)

    m, lv, zz = flat(mu), flat(logvar), flat(z)
    for variance in VARIANCES:
        got = F.mixture_kl(mu, logvar, z, variance=variance, reduction="none", pattern=pattern)
        expected = eq19_kl_g(eq17_mean(m), _oracle_variance(variance, m, lv, zz))
        assert got.shape == (4,)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11)
    kl_i = F.individual_variance_kl(logvar, reduction="batchmean", pattern=pattern)
    np.testing.assert_allclose(kl_i.item(), eq20_elements(lv).sum() / (3 * 5 * 2), rtol=1e-11)
    kl = F.gaussian_kl(mu, logvar, reduction="none", pattern=pattern)
    np.testing.assert_allclose(kl.numpy(), eq10_elements(m, lv), rtol=1e-11)


def test_diagnostics_match_numpy() -> None:
    mu, logvar, _ = _posterior(50, 8, seed=5)
    mu = mu * torch.linspace(0.0, 1.0, 8, dtype=torch.float64)  # some dims nearly inactive
    m, lv = f64(mu), f64(logvar)
    assert F.active_units(mu).item() == int(np.sum(np.var(m, axis=0) > 0.01))
    np.testing.assert_allclose(F.kl_per_dim(mu, logvar).numpy(), eq10_elements(m, lv).mean(0))
    np.testing.assert_allclose(
        F.mean_posterior_sigma(logvar).item(), np.mean(np.sqrt(np.exp(lv))), rtol=1e-12
    )


# ---------------------------------------------------------------- torch.distributions


def test_gaussian_kl_equals_torch_distributions() -> None:
    """Eq. 10, each element KL(N(mu, sigma^2) || N(0, 1))."""
    mu, logvar, _ = _posterior(17, 9, seed=6)
    reference = kl_divergence(
        Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    )
    torch.testing.assert_close(F.gaussian_kl(mu, logvar, reduction="none"), reference)
    torch.testing.assert_close(F.gaussian_kl(mu, logvar, reduction="sum"), reference.sum())


def test_individual_variance_kl_kl_form_equals_torch_distributions() -> None:
    """form="kl" is the true KL(N(mu, sigma^2) || N(mu, 1)); form="paper" is twice it."""
    mu, logvar, _ = _posterior(17, 9, seed=7)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(mu, torch.ones_like(mu)))
    torch.testing.assert_close(
        F.individual_variance_kl(logvar, form="kl", reduction="none"), reference
    )
    torch.testing.assert_close(F.individual_variance_kl(logvar), 2 * reference.sum())


@pytest.mark.parametrize("variance", VARIANCES)
def test_mixture_kl_equals_torch_distributions_given_moments(variance: str) -> None:
    """Eq. 19 is KL(N(mean, var) || N(0, I)) with the moments of eqs. 17-18 (NumPy oracle)."""
    mu, logvar, z = _posterior(41, 6, seed=8)
    m, lv, zz = f64(mu), f64(logvar), f64(z)
    mean = torch.from_numpy(eq17_mean(m))
    var = torch.from_numpy(_oracle_variance(variance, m, lv, zz))
    reference = torch_normal_kl(mean, var)
    got = F.mixture_kl(mu, logvar, z, variance=variance, reduction="none")
    torch.testing.assert_close(got, reference)


# ---------------------------------------------------------------- statistics


def test_sample_and_mixture_variance_agree_statistically() -> None:
    """Eq. 18's sample estimator is unbiased for the exact mixture variance given (mu, sigma).

    With a_i = mu_i - mean, the sample estimator is 1/N sum (a_i + sigma_i eps_i)^2, whose
    variance given (mu, sigma) is 1/N^2 sum (4 a_i^2 sigma_i^2 + 2 sigma_i^4). The test allows
    5 standard errors per dim (a two-sided 5-sigma band; the seed is fixed, so it is
    deterministic, and a biased estimator, e.g. one that drops sigma^2, misses by ~100 SE).
    """
    n, d = 200_000, 4
    g = torch.Generator().manual_seed(9)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([0.1, 0.5, 1.0, 2.0])
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 - 0.3
    sigma = (0.5 * logvar).exp()
    z = mu + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)

    _, var_sample = F.batch_moments(mu, logvar, z, variance="sample")
    mean, var_mixture = F.batch_moments(mu, logvar, variance="mixture")
    a, s2 = f64(mu) - f64(mu).mean(0), f64(sigma) ** 2
    standard_error = np.sqrt(np.sum(4 * a**2 * s2 + 2 * s2**2, axis=0)) / n
    gap = np.abs(var_sample.numpy() - var_mixture.numpy())
    assert np.all(gap < 5 * standard_error), (gap / standard_error).tolist()
    # the test can fail: the means-only estimator is biased by mean(sigma^2) >> 5 SE
    _, var_means = F.batch_moments(mu, logvar, variance="means")
    assert np.all(np.abs(var_sample.numpy() - var_means.numpy()) > 50 * standard_error)

    # KL_G agrees within the delta-method standard error: dKL/dvar = (1 - 1/var) / 2
    kl_sample = F.mixture_kl(mu, logvar, z, variance="sample", reduction="none").numpy()
    kl_mixture = F.mixture_kl(mu, logvar, variance="mixture", reduction="none").numpy()
    kl_se = np.abs(0.5 * (1 - 1 / var_mixture.numpy())) * standard_error
    assert np.all(np.abs(kl_sample - kl_mixture) < 5 * kl_se + 1e-12)
    assert mean.shape == (d,)


def test_variance_is_stable_when_mean_dominates() -> None:
    """|mean| >> sigma in float32: centred deviations keep the variance accurate.

    mu = 1e4 + noise of std 0.05 (the float32 spacing at 1e4 is 2^-10 ~ 1e-3). The oracle is
    float64 on the same float32 values. The one-pass E[z^2] - E[z]^2 in float32 would lose
    everything (E[z^2] ~ 1e8 has a spacing of 8): the test asserts that it would fail.
    """
    n, d = 4096, 3
    g = torch.Generator().manual_seed(10)
    mu = (1e4 + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    logvar = torch.full((n, d), math.log(0.03**2))
    z = (mu.double() + 0.03 * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    m, lv, zz = f64(mu), f64(logvar), f64(z)
    expected = {
        "sample": eq18_variance(zz, m),
        "means": np.var(m, axis=0),
        "mixture": np.mean(np.exp(lv), axis=0) + np.var(m, axis=0),
    }
    for variance, oracle in expected.items():
        _, var = F.batch_moments(mu, logvar, z, variance=variance)
        assert var.dtype == torch.float32
        np.testing.assert_allclose(var.numpy(), oracle, rtol=1e-3)
        kl = F.mixture_kl(mu, logvar, z, variance=variance, reduction="none")
        np.testing.assert_allclose(kl.numpy(), eq19_kl_g(m.mean(0), oracle), rtol=1e-5)
    naive = (mu.square().mean(0) - mu.mean(0).square()).numpy()
    assert not np.allclose(naive, expected["means"], rtol=1e-3)
