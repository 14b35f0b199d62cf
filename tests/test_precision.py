"""Low-precision inputs (float32, bfloat16, float16) against the float64 oracle.

Two checks, with the tolerance rationale spelled out:

1. *Accumulation*: on inputs already rounded to the low dtype, the result must equal the
   float64 oracle of those same rounded values up to float32 arithmetic, because the library
   promises to accumulate in at least float32. The terms of every KL are non-negative, so a
   pairwise float32 sum of K terms is within about log2(K) * 2^-24 of the exact sum relative
   to the total; ``rtol = 2e-5`` is a >10x margin for K <= 2048. eq. 19's
   ``var - 1 - log var`` also loses up to a few float32 ulps of ``max(var, |log var|, 1)``
   per dim to cancellation, hence the ``atol``.
2. *Input rounding*: against the float64 oracle of the unrounded inputs, the error is
   dominated by rounding each input to the dtype (unit roundoff u = 2^-8 for bfloat16, 2^-11
   for float16, 2^-24 for float32). The test derives a first-order bound of the propagated
   error from the equations (sum of |partial derivative| * u * |input|) and allows twice
   that plus the accumulation slack of check 1.
"""

from __future__ import annotations

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
)

from mixelbo import functional as F

LOW = (torch.float32, torch.bfloat16, torch.float16)
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
RTOL = 2e-5
# the CUDA runs exercise whatever kernel the library dispatches to there (skipped without a GPU)
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]


def _inputs(seed: int, n: int = 64, d: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5 + 0.5
    logvar = torch.rand(n, d, generator=g, dtype=torch.float64) * 4 - 2
    z = mu + torch.randn(n, d, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    return mu, logvar, z


def _variance(kind: str, mu: np.ndarray, logvar: np.ndarray, z: np.ndarray) -> np.ndarray:
    if kind == "sample":
        return eq18_variance(z, mu)
    if kind == "means":
        return means_variance(mu)
    return mixture_variance(mu, logvar)


def _kl_g_rounding_bound(
    kind: str, mu: np.ndarray, logvar: np.ndarray, z: np.ndarray, u: float
) -> np.ndarray:
    """First-order bound, per dim, of eq. 19's change when every input moves by u |x|.

    KL_j = (v + m^2 - 1 - log v) / 2, so |dKL| <= |m| |dm| + |1 - 1/v| |dv| / 2, with
    |dm| <= u mean|mu| (eq. 17) and, for v = mean((y - m)^2) (y = z or mu),
    |dv| <= 2 mean(|y - m| (u |y| + |dm|)); the mixture adds mean(sigma^2 |logvar|) u.
    """
    m = eq17_mean(mu)
    dm = u * np.mean(np.abs(mu), axis=0)
    y = z if kind == "sample" else mu
    dv = 2 * np.mean(np.abs(y - m) * (u * np.abs(y) + dm), axis=0)
    if kind == "mixture":
        dv = dv + u * np.mean(np.exp(logvar) * np.abs(logvar), axis=0)
    v = _variance(kind, mu, logvar, z)
    return np.abs(m) * dm + 0.5 * np.abs(1 - 1 / v) * dv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("variance", ["sample", "means", "mixture"])
def test_mixture_kl_low_precision(dtype: torch.dtype, variance: str, device: str) -> None:
    mu, logvar, z = _inputs(0)
    low = [t.to(dtype) for t in (mu, logvar, z)]
    got = F.mixture_kl(*(t.to(device) for t in low), variance=variance, reduction="none").cpu()
    assert got.dtype == torch.float32  # accumulation dtype, returned as such

    # 1. accumulation: same rounded inputs in float64
    rm, rlv, rz = (f64(t) for t in low)
    v = _variance(variance, rm, rlv, rz)
    exact_rounded = eq19_kl_g(eq17_mean(rm), v)
    cancellation = 8 * 2.0**-24 * np.maximum(np.maximum(v, np.abs(np.log(v))), 1.0)
    accumulation_error = np.abs(got.numpy() - exact_rounded)
    assert np.all(accumulation_error <= RTOL * exact_rounded + cancellation), accumulation_error

    # 2. input rounding: unrounded inputs in float64, bound from the equations
    m, lv, zz = f64(mu), f64(logvar), f64(z)
    exact = eq19_kl_g(eq17_mean(m), _variance(variance, m, lv, zz))
    bound = _kl_g_rounding_bound(variance, m, lv, zz, UNIT_ROUNDOFF[dtype])
    error = np.abs(got.numpy() - exact)
    assert np.all(error <= 2 * bound + RTOL * exact + cancellation), (error / bound).max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("form", ["paper", "kl"])
def test_individual_variance_kl_low_precision(dtype: torch.dtype, form: str, device: str) -> None:
    _, logvar, _ = _inputs(1)
    scale = 0.5 if form == "kl" else 1.0
    low = logvar.to(dtype)
    got = F.individual_variance_kl(low.to(device), form=form).cpu()
    assert got.dtype == torch.float32
    exact_rounded = scale * eq20_elements(f64(low)).sum()
    np.testing.assert_allclose(got.item(), exact_rounded, rtol=RTOL)
    # d/dlogvar (e^lv - 1 - lv) = e^lv - 1; each logvar moves by at most u |lv|
    lv = f64(logvar)
    bound = scale * np.sum(np.abs(np.expm1(lv)) * np.abs(lv)) * UNIT_ROUNDOFF[dtype]
    exact = scale * eq20_elements(lv).sum()
    assert abs(got.item() - exact) <= 2 * bound + RTOL * exact


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_gaussian_kl_low_precision(dtype: torch.dtype, device: str) -> None:
    mu, logvar, _ = _inputs(2)
    low = [t.to(dtype) for t in (mu, logvar)]
    got = F.gaussian_kl(*(t.to(device) for t in low), reduction="sum").cpu()
    assert got.dtype == torch.float32
    exact_rounded = eq10_elements(f64(low[0]), f64(low[1])).sum()
    np.testing.assert_allclose(got.item(), exact_rounded, rtol=RTOL)
    m, lv = f64(mu), f64(logvar)
    u = UNIT_ROUNDOFF[dtype]
    bound = np.sum(0.5 * np.abs(np.expm1(lv)) * np.abs(lv) + m**2) * u
    exact = eq10_elements(m, lv).sum()
    assert abs(got.item() - exact) <= 2 * bound + RTOL * exact


def test_half_precision_sums_do_not_overflow() -> None:
    """A float16 sum of 4096 elements of 142.4 (= e^5 - 6) is 5.8e5 > 65504, float16's max."""
    logvar = torch.full((64, 64), 5.0, dtype=torch.float16)
    got = F.individual_variance_kl(logvar)
    expected = 4096 * (np.exp(5.0) - 1 - 5.0)
    assert torch.isfinite(got)
    np.testing.assert_allclose(got.item(), expected, rtol=RTOL)
    assert not torch.isfinite((logvar.exp() - 1 - logvar).sum())  # what fp16 would give
    mu = torch.full((64, 64), 40.0, dtype=torch.float16)
    np.testing.assert_allclose(
        F.gaussian_kl(mu, logvar, reduction="sum").item(), 4096 * (expected / 4096 + 1600) / 2,
        rtol=RTOL,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_adversarial_losses_low_precision(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    real = (torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64) * 3).to(dtype)
    fake = (torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64) * 3).to(dtype)
    r, f = f64(real), f64(fake)

    def neg_log_sigmoid(x: np.ndarray) -> np.ndarray:
        return np.log1p(np.exp(-x))

    generator = F.adversarial_generator_loss(fake)
    discriminator = F.adversarial_discriminator_loss(real, fake)
    assert generator.dtype == discriminator.dtype == torch.float32
    np.testing.assert_allclose(generator.item(), neg_log_sigmoid(f).mean(), rtol=RTOL)
    expected_d = neg_log_sigmoid(r).mean() + neg_log_sigmoid(-f).mean()
    np.testing.assert_allclose(discriminator.item(), expected_d, rtol=RTOL)
