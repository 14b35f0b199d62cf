"""Hypothesis property tests of mixelbo.functional (the "ci" profile is derandomized).

Non-negativity, zero exactly at the prior, batch permutation invariance, KL_I independent of
mu, reduction identities, ``pattern`` equivalences, and finite values and gradients over the
extreme ranges of the issue (logvar in [-30, 30], |mu| up to 1e4, sigma down to 1e-3).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.distributions import Normal, kl_divergence

from mixelbo import functional as F

VARIANCES = ("sample", "means", "mixture")
ELEMENT_REDUCTIONS = ("sum", "batchmean", "mean", "none")


@st.composite
def posteriors(
    draw: st.DrawFn,
    mu_bound: float = 10.0,
    logvar_low: float = -30.0,
    logvar_high: float = 30.0,
    max_samples: int = 8,
    max_dims: int = 5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, logvar, z) in float64 with z = mu + sigma * eps; eps drawn by hypothesis too."""
    n = draw(st.integers(2, max_samples))
    d = draw(st.integers(1, max_dims))
    finite = {"allow_nan": False, "allow_infinity": False}
    mu = draw(arrays(np.float64, (n, d), elements=st.floats(-mu_bound, mu_bound, **finite)))
    logvar = draw(arrays(np.float64, (n, d), elements=st.floats(logvar_low, logvar_high, **finite)))
    eps = draw(arrays(np.float64, (n, d), elements=st.floats(-4.0, 4.0, **finite)))
    mu_t, logvar_t = torch.from_numpy(mu), torch.from_numpy(logvar)
    z = mu_t + torch.from_numpy(eps) * (0.5 * logvar_t).exp()
    return mu_t, logvar_t, z


# ---------------------------------------------------------------- non-negativity


@given(posteriors(mu_bound=100.0, logvar_low=-20.0, logvar_high=20.0), st.sampled_from(VARIANCES))
def test_mixture_kl_is_non_negative(
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], variance: str
) -> None:
    mu, logvar, z = inputs
    kl = F.mixture_kl(mu, logvar, z, variance=variance, reduction="none")
    assert torch.all(kl >= 0), kl


@given(posteriors())
def test_individual_and_gaussian_kl_are_non_negative(
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    mu, logvar, _ = inputs
    assert torch.all(F.individual_variance_kl(logvar, reduction="none") >= 0)
    assert torch.all(F.individual_variance_kl(logvar, form="kl", reduction="none") >= 0)
    assert torch.all(F.gaussian_kl(mu, logvar, reduction="none") >= 0)


# ---------------------------------------------------------------- zero exactly at the prior


@given(st.integers(1, 6), st.integers(1, 5), st.randoms(use_true_random=False))
def test_zero_exactly_at_the_prior(half: int, d: int, rng: object) -> None:
    """Half the samples at +1 and half at -1 (any order): mean exactly 0, variance exactly 1."""
    signs = torch.tensor([1.0] * half + [-1.0] * half, dtype=torch.float64)
    order = list(range(2 * half))
    rng.shuffle(order)
    unit = signs[order][:, None].expand(2 * half, d).contiguous()
    zeros = torch.zeros_like(unit)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        u, o = unit.to(dtype), zeros.to(dtype)
        assert F.mixture_kl(o, o, u, variance="sample").item() == 0.0  # z = +-1 around mu = 0
        assert F.mixture_kl(u, o, variance="means").item() == 0.0  # means +-1
        assert F.mixture_kl(o, o, variance="mixture").item() == 0.0  # every N(0, 1)
        assert F.individual_variance_kl(o).item() == 0.0
        assert F.individual_variance_kl(u, form="kl").item() > 0.0  # sigma^2 = e: not zero
        assert F.gaussian_kl(o, o).item() == 0.0


# ---------------------------------------------------------------- permutation invariance


@given(posteriors(), st.randoms(use_true_random=False))
def test_batch_permutation_invariance(
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rng: object
) -> None:
    mu, logvar, z = inputs
    order = list(range(mu.shape[0]))
    rng.shuffle(order)
    p = torch.tensor(order)
    for variance in VARIANCES:
        before = F.mixture_kl(mu, logvar, z, variance=variance, reduction="none")
        after = F.mixture_kl(mu[p], logvar[p], z[p], variance=variance, reduction="none")
        torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)
    for reduction in ("sum", "batchmean", "mean"):
        torch.testing.assert_close(
            F.individual_variance_kl(logvar[p], reduction=reduction),
            F.individual_variance_kl(logvar, reduction=reduction),
            rtol=1e-10,
            atol=1e-12,
        )
        torch.testing.assert_close(
            F.gaussian_kl(mu[p], logvar[p], reduction=reduction),
            F.gaussian_kl(mu, logvar, reduction=reduction),
            rtol=1e-10,
            atol=1e-12,
        )


# ---------------------------------------------------------------- KL_I ignores mu


@given(posteriors(logvar_low=-10, logvar_high=10), st.floats(-1e4, 1e4))
def test_kl_i_independent_of_mu(
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shift: float
) -> None:
    """KL(N(mu, sigma^2) || N(mu, 1)) is the same for any mu; form="kl" equals it."""
    mu, logvar, _ = inputs
    sigma = (0.5 * logvar).exp()
    ones = torch.ones_like(mu)
    for means in (mu, mu + shift, torch.zeros_like(mu)):
        reference = kl_divergence(Normal(means, sigma), Normal(means, ones)).sum()
        torch.testing.assert_close(
            F.individual_variance_kl(logvar, form="kl"), reference, rtol=1e-9, atol=1e-9
        )


# ---------------------------------------------------------------- reduction identities


@given(posteriors(logvar_low=-10, logvar_high=10))
def test_reduction_identities(inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    mu, logvar, z = inputs
    n, d = mu.shape

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    for variance in VARIANCES:
        kwargs = {"variance": variance}
        total = F.mixture_kl(mu, logvar, z, reduction="sum", **kwargs)
        mean = F.mixture_kl(mu, logvar, z, reduction="mean", **kwargs)
        none = F.mixture_kl(mu, logvar, z, reduction="none", **kwargs)
        assert none.shape == (d,)
        close(total, mean * d)
        close(none.sum(), total)
    for form in ("paper", "kl"):
        values = {
            r: F.individual_variance_kl(logvar, form=form, reduction=r) for r in ELEMENT_REDUCTIONS
        }
        assert values["none"].shape == (n, d)
        close(values["sum"], values["mean"] * n * d)
        close(values["batchmean"], values["sum"] / n)
        close(values["none"].sum(), values["sum"])
    values = {r: F.gaussian_kl(mu, logvar, reduction=r) for r in ELEMENT_REDUCTIONS}
    assert values["none"].shape == (n, d)
    close(values["sum"], values["mean"] * n * d)
    close(values["batchmean"], values["sum"] / n)
    close(values["none"].sum(), values["sum"])


# ---------------------------------------------------------------- pattern equivalences


@settings(max_examples=20)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)
def test_pattern_equivalences(b: int, c: int, h: int, w: int, seed: int) -> None:
    """A pattern gives the same result as reshaping by hand and passing no pattern."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, c, h, w)
    mu = torch.randn(shape, generator=g, dtype=torch.float64)
    logvar = torch.randn(shape, generator=g, dtype=torch.float64)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    spatial = "b c h w -> (b h w) c"

    def by_hand(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 2, 3, 1).reshape(b * h * w, c)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, c * h * w)

    cases = [(spatial, by_hand, b * h * w), ("b c h w -> b (c h w)", flat, b), (None, flat, b)]
    for pattern, manual, samples in cases:
        m, lv, zz = manual(mu), manual(logvar), manual(z)
        for reduction in ELEMENT_REDUCTIONS:
            torch.testing.assert_close(
                F.individual_variance_kl(logvar, reduction=reduction, pattern=pattern),
                F.individual_variance_kl(lv, reduction=reduction),
            )
            torch.testing.assert_close(
                F.gaussian_kl(mu, logvar, reduction=reduction, pattern=pattern),
                F.gaussian_kl(m, lv, reduction=reduction),
            )
        if samples < 2:
            continue
        for variance in VARIANCES:
            torch.testing.assert_close(
                F.mixture_kl(mu, logvar, z, variance=variance, reduction="none", pattern=pattern),
                F.mixture_kl(m, lv, zz, variance=variance, reduction="none"),
            )
        torch.testing.assert_close(
            F.active_units(mu, pattern=pattern), F.active_units(m), rtol=0, atol=0
        )


# ---------------------------------------------------------------- finite values and gradients


@st.composite
def extreme_posteriors(draw: st.DrawFn, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """|mu| up to 1e4, logvar in [-30, 30] and a sampled z whose sigma goes down to 1e-3."""
    n = draw(st.integers(2, 6))
    d = draw(st.integers(1, 4))
    finite = {"allow_nan": False, "allow_infinity": False}
    mu = draw(arrays(np.float64, (n, d), elements=st.floats(-1e4, 1e4, **finite)))
    logvar = draw(arrays(np.float64, (n, d), elements=st.floats(-30.0, 30.0, **finite)))
    log_sigma = draw(arrays(np.float64, (n, d), elements=st.floats(math.log(1e-3), 2.0, **finite)))
    eps = draw(arrays(np.float64, (n, d), elements=st.floats(-4.0, 4.0, **finite)))
    if draw(st.booleans()):  # a degenerate batch: every mean equal
        mu[:] = mu[0, 0]
    z = mu + eps * np.exp(log_sigma)
    return tuple(torch.from_numpy(a).to(dtype) for a in (mu, logvar, z))


def _assert_finite_with_gradients(loss: torch.Tensor, *inputs: torch.Tensor) -> None:
    assert torch.isfinite(loss).all(), loss
    grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all(), grad


@settings(max_examples=30)
@given(st.data(), st.sampled_from([torch.float32, torch.float64]))
def test_finite_values_and_gradients_at_extremes(data: st.DataObject, dtype: torch.dtype) -> None:
    mu, logvar, z = (
        t.requires_grad_() for t in data.draw(extreme_posteriors(dtype), label="inputs")
    )
    for variance in VARIANCES:
        for reduction in ("sum", "mean", "none"):
            loss = F.mixture_kl(mu, logvar, z, variance=variance, reduction=reduction)
            _assert_finite_with_gradients(loss, mu, logvar, z)
    for form in ("paper", "kl"):
        for reduction in ELEMENT_REDUCTIONS:
            loss = F.individual_variance_kl(logvar, form=form, reduction=reduction)
            _assert_finite_with_gradients(loss, logvar)
    for reduction in ELEMENT_REDUCTIONS:
        _assert_finite_with_gradients(F.gaussian_kl(mu, logvar, reduction=reduction), mu, logvar)
