"""``covariance="full"``: KL(N(m, S) || N(0, I)) with the full aggregate covariance S.

Oracles (``tests/oracles.py``): the NumPy float64 covariance in the uncentred textbook form
with ``slogdet``, and ``torch.distributions``' ``MultivariateNormal`` KL (autograd through it
is the gradient oracle). Both library paths are checked: the closed-form gradient (the
default) and autograd through the reference expression (``fused=False``); for ``"mixture"``
with fewer samples than dims the default takes the low-rank path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracles import exact_mixture_full_kl, f64, full_covariance, full_kl, torch_full_kl

from mixelbo import MixtureKL, RegularizedELBO
from mixelbo import functional as F

VARIANCES = ("sample", "means", "mixture")
PATHS = (None, False)  # the closed form, the reference expression


def _posteriors(
    n: int,
    d: int,
    *,
    seed: int = 0,
    spread: float = 1.0,
    offset: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Correlated Gaussian means (a random rotation, scales exp(+-spread)), log-variances
    around -1 and a reparameterised z."""
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    rotation = torch.linalg.qr(torch.randn(d, d, **kw))[0]
    scales = (spread * (2 * torch.rand(d, **kw) - 1)).exp()
    mu = offset + torch.randn(n, d, **kw) @ (scales[:, None] * rotation)
    logvar = 0.3 * torch.randn(n, d, **kw) - 1.0
    z = mu + torch.randn(n, d, **kw) * (0.5 * logvar).exp()
    return mu.to(dtype), logvar.to(dtype), z.to(dtype)


def _full(mu, logvar, z, variance, fused=None, **kw) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return F.mixture_kl(mu, logvar, z, variance=variance, covariance="full", fused=fused, **kw)


def _oracle(mu, logvar, z, variance) -> float:  # type: ignore[no-untyped-def]
    return full_kl(*full_covariance(f64(mu), f64(logvar), f64(z), variance))


# ---------------------------------------------------------------- by hand


def test_by_hand() -> None:
    """Two perfectly correlated dims: S = [[2, 1], [1, 2]] (mixture, sigma = 1), m = 0;
    KL = 1/2 (4 - 2 - log 3); each marginal is N(0, 2), so the diagonal KL is 1 - log 2."""
    mu = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    logvar = torch.zeros(2, 2, dtype=torch.float64)
    mean, cov = F.batch_covariance(mu, logvar, variance="mixture")
    torch.testing.assert_close(mean, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(cov, torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
    for fused in PATHS:
        kl = _full(mu, logvar, None, "mixture", fused)
        assert kl.item() == pytest.approx(0.5 * (2.0 - math.log(3.0)), rel=1e-14)
    diagonal = F.mixture_kl(mu, logvar, variance="mixture")
    assert diagonal.item() == pytest.approx(1.0 - math.log(2.0), rel=1e-14)


@pytest.mark.parametrize("variance", VARIANCES)
def test_batch_covariance_matches_numpy_and_batch_moments(variance: str) -> None:
    mu, logvar, z = _posteriors(40, 5, seed=1)
    mean, cov = F.batch_covariance(mu, logvar, z, variance=variance)
    want_mean, want_cov = full_covariance(f64(mu), f64(logvar), f64(z), variance)
    np.testing.assert_allclose(f64(mean), want_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f64(cov), want_cov, rtol=1e-10, atol=1e-12)
    _, var = F.batch_moments(mu, logvar, z, variance=variance)
    torch.testing.assert_close(cov.diagonal(), var, rtol=1e-12, atol=1e-12)
    # float32 in, float32 out (formed in float64)
    mean32, cov32 = F.batch_covariance(mu.float(), logvar.float(), z.float(), variance=variance)
    assert mean32.dtype == cov32.dtype == torch.float32


# ---------------------------------------------------------------- value and gradient


# (n, d): more samples than dims (dense), and for "mixture" fewer (the low-rank path)
SIZES = [(40, 5), (7, 3), (200, 24)]


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("size", [*SIZES, (5, 9), (3, 40), (6, 6)])
def test_value_matches_the_oracles(
    size: tuple[int, int], variance: str, fused: bool | None
) -> None:
    n, d = size
    if n <= d and variance != "mixture":
        pytest.skip("singular by construction (tested below)")
    mu, logvar, z = _posteriors(n, d, seed=n + d)
    kl = _full(mu, logvar, z, variance, fused)
    assert kl.dtype == torch.float64 and kl.shape == ()
    assert kl.item() == pytest.approx(_oracle(mu, logvar, z, variance), rel=1e-10, abs=1e-10)
    mvn = torch_full_kl(mu, logvar, z, variance)
    torch.testing.assert_close(kl, mvn, rtol=1e-10, atol=1e-10)
    mean = _full(mu, logvar, z, variance, fused, reduction="mean")
    torch.testing.assert_close(mean, kl / d, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("size", [*SIZES, (5, 9), (3, 40), (6, 6)])
def test_gradients_match_the_oracle(
    size: tuple[int, int], variance: str, fused: bool | None
) -> None:
    n, d = size
    if n <= d and variance != "mixture":
        pytest.skip("singular by construction")
    inputs = [t.requires_grad_() for t in _posteriors(n, d, seed=3 * n + d)]
    got = torch.autograd.grad(2.5 * _full(*inputs, variance, fused), inputs, allow_unused=True)
    want = torch.autograd.grad(2.5 * torch_full_kl(*inputs, variance), inputs, allow_unused=True)
    for name, a, b in zip(("mu", "logvar", "z"), got, want, strict=True):
        if b is None or not b.abs().sum():
            assert a is None or not a.abs().sum(), name  # an input the estimator ignores
            continue
        assert a is not None, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11, msg=name)


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("size", [(9, 3), (3, 5)])
def test_gradcheck_of_the_closed_form(size: tuple[int, int], variance: str) -> None:
    n, d = size
    if n <= d and variance != "mixture":
        pytest.skip("singular by construction")
    inputs = tuple(t.requires_grad_() for t in _posteriors(n, d, seed=11))
    assert torch.autograd.gradcheck(lambda *a: _full(*a, variance), inputs)


# ---------------------------------------------------------------- properties


@st.composite
def well_conditioned(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Random correlated posteriors; N > d unless the estimator is "mixture"."""
    variance = draw(st.sampled_from(VARIANCES))
    d = draw(st.integers(1, 8))
    low = 2 if variance == "mixture" else d + 2
    n = draw(st.integers(low, max(low, 24)))
    seed = draw(st.integers(0, 2**16))
    spread = draw(st.floats(0.0, 2.0))
    offset = draw(st.floats(-5.0, 5.0))
    return (*_posteriors(n, d, seed=seed, spread=spread, offset=offset), variance)


@settings(max_examples=30)
@given(well_conditioned())
def test_property_value_and_gradient_match_the_oracle(
    case: tuple[torch.Tensor, torch.Tensor, torch.Tensor, str],
) -> None:
    *tensors, variance = case
    inputs = [t.requires_grad_() for t in tensors]
    kl = _full(*inputs, variance)
    oracle = torch_full_kl(*inputs, variance)
    assert kl.item() == pytest.approx(_oracle(*tensors, variance), rel=1e-9, abs=1e-9)
    got = torch.autograd.grad(kl, inputs, allow_unused=True)
    want = torch.autograd.grad(oracle, inputs, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        if b is not None and a is not None:
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@settings(max_examples=30)
@given(well_conditioned())
def test_property_non_negative_and_at_least_the_diagonal_kl(
    case: tuple[torch.Tensor, torch.Tensor, torch.Tensor, str],
) -> None:
    """KL >= 0, and (Hadamard's inequality, log det S <= sum log S_jj) the full KL is at least
    eq. 19's: it adds 1/2 (sum_j log S_jj - log det S) >= 0, the correlation penalty."""
    *tensors, variance = case
    full = _full(*tensors, variance)
    diagonal = F.mixture_kl(*tensors, variance=variance)
    assert full.item() >= 0.0
    assert full.item() >= diagonal.item() - 1e-9 * max(1.0, abs(diagonal.item()))


@settings(max_examples=20)
@given(st.integers(1, 4), st.integers(1, 3), st.sampled_from(VARIANCES), st.integers(0, 99))
def test_property_diagonal_covariance_gives_eq19(k: int, d: int, variance: str, seed: int) -> None:
    """Deviations with orthogonal columns (rows of a 2^d sign pattern, scaled per dim, each
    pattern repeated k times) have an exactly diagonal covariance: then the full KL is eq. 19."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.tensor(
        [[1.0 if (row >> j) & 1 else -1.0 for j in range(d)] for row in range(2**d)],
        dtype=torch.float64,
    ).repeat(k, 1)
    scale = torch.rand(d, generator=g, dtype=torch.float64) + 0.2
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    mu = shift + signs * scale
    logvar = torch.randn(mu.shape, generator=g, dtype=torch.float64) - 1
    z = mu  # "sample" with z = mu: the deviations of mu about their mean
    n = mu.shape[0]
    assume(variance == "mixture" or n > d)
    full = _full(mu, logvar, z, variance)
    torch.testing.assert_close(full, F.mixture_kl(mu, logvar, z, variance=variance))


@settings(max_examples=40)
@given(
    st.sampled_from(VARIANCES),
    st.integers(2, 6),
    st.integers(1, 4),
    st.data(),
)
def test_property_finite_or_value_error_never_nan(
    variance: str, n: int, d: int, data: st.DataObject
) -> None:
    """Arbitrary inputs (repeated rows, constant columns, logvar down to -30): a finite KL with
    finite gradients, or a ValueError; never inf or NaN."""
    finite = {"allow_nan": False, "allow_infinity": False}
    values = st.sampled_from([0.0, 1.0, -1.0, 3.0]) | st.floats(-100, 100, **finite)
    mu = torch.from_numpy(data.draw(arrays(np.float64, (n, d), elements=values)))
    logvar = torch.from_numpy(data.draw(arrays(np.float64, (n, d), elements=st.floats(-30, 30))))
    z = torch.from_numpy(data.draw(arrays(np.float64, (n, d), elements=values)))
    for dtype in (torch.float64, torch.float32):
        inputs = [t.to(dtype).requires_grad_() for t in (mu, logvar, z)]
        try:
            kl = _full(*inputs, variance)
        except ValueError as error:
            assert "covariance='full'" in str(error)
            continue
        assert torch.isfinite(kl), kl
        for grad in torch.autograd.grad(kl, inputs, allow_unused=True):
            assert grad is None or torch.isfinite(grad).all()


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("variance", VARIANCES)
def test_float32_ill_conditioned_is_close_to_the_float64_oracle(variance: str) -> None:
    """Eigenvalues of S spanning 1e-6 to 1e2 (condition 1e8), mean 3 away from 0: float32
    inputs give the float64 oracle's value (on the float32-rounded inputs) to 1e-6, and finite
    gradients close to the oracle's. (The same expression with the Gram matrix and Cholesky in
    float32, which this test would catch, is off by orders of magnitude or fails.)"""
    d, n = 16, 4000
    g = torch.Generator().manual_seed(5)
    rotation = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    eigen = torch.logspace(-6, 2, d, dtype=torch.float64)
    white = torch.randn(n, d, generator=g, dtype=torch.float64)
    white = white - white.mean(0)
    white = white @ torch.linalg.inv(torch.linalg.cholesky(white.T @ white / n)).T  # Cov = I
    mu = 3.0 + white @ (eigen.sqrt()[:, None] * rotation)
    logvar = torch.full((n, d), -30.0, dtype=torch.float64)  # mixture: S ~ Cov(mu)
    z = mu
    inputs32 = [t.float().requires_grad_() for t in (mu, logvar, z)]
    kl = _full(*inputs32, variance)
    assert kl.dtype == torch.float32 and torch.isfinite(kl)
    rounded = [t.detach().double().requires_grad_() for t in inputs32]
    oracle = torch_full_kl(*rounded, variance)
    assert kl.item() == pytest.approx(_oracle(*rounded, variance), rel=1e-6)
    got = torch.autograd.grad(kl, inputs32, allow_unused=True)
    want = torch.autograd.grad(oracle, rounded, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        if a is not None and b is not None:
            assert a.dtype == torch.float32 and torch.isfinite(a).all()
            scale = b.abs().max().item()
            assert (a.double() - b).abs().max().item() <= 1e-4 * scale


def test_half_precision_inputs_accumulate_in_float64() -> None:
    mu, logvar, z = _posteriors(64, 6, seed=2)
    for dtype in (torch.bfloat16, torch.float16):
        inputs = [t.to(dtype).requires_grad_() for t in (mu, logvar, z)]
        kl = _full(*inputs, "mixture")
        assert kl.dtype == torch.float32
        rounded = [t.detach().double() for t in inputs]
        assert kl.item() == pytest.approx(_oracle(*rounded, "mixture"), rel=1e-6)
        kl.backward()
        assert inputs[0].grad is not None and inputs[0].grad.dtype == dtype


@pytest.mark.parametrize("variance", ["means", "sample"])
def test_too_few_samples_raise(variance: str) -> None:
    """N <= d: the covariance has rank <= N - 1, singular; raised before any work."""
    mu, logvar, z = _posteriors(16, 32)
    for fused in PATHS:
        with pytest.raises(ValueError, match=r"N=16 samples <= d=32 dims"):
            _full(mu, logvar, z, variance, fused)
    with pytest.raises(ValueError, match=r"N=32 samples <= d=32 dims"):
        _full(*_posteriors(32, 32), variance)
    assert torch.isfinite(_full(*_posteriors(33, 32), variance))


@pytest.mark.parametrize("fused", PATHS)
def test_singular_covariance_raises_not_nan(fused: bool | None) -> None:
    """A latent dim with no spread (N > d, "means"), or linearly dependent dims: the float64
    Cholesky fails, and the error says so."""
    mu, logvar, z = _posteriors(50, 4)
    dead = mu.clone()
    dead[:, 2] = 1.5
    with pytest.raises(ValueError, match="singular to float64 precision"):
        _full(dead, logvar, z, "means", fused)
    dependent = mu.clone()
    dependent[:, 3] = 2 * mu[:, 0] - mu[:, 1]
    with pytest.raises(ValueError, match="singular"):
        _full(dependent, logvar, z, "means", fused)
    # a repeated dim: exact arithmetic gives a zero pivot, rounding a tiny positive one (a
    # finite but meaningless KL without the floor L_jj^2 <= d eps S_jj)
    for scale in (1.0, 3.0, 1e-3):
        repeated = torch.cat([mu, scale * mu[:, 1:2]], 1)
        with pytest.raises(ValueError, match="breaks down at pivot 5"):
            _full(repeated, None, None, "means", fused)
    # the same dims with "mixture": the individual variances keep S positive definite
    assert torch.isfinite(_full(dead, logvar, z, "mixture", fused))


def test_mixture_with_collapsed_posteriors_and_few_samples() -> None:
    """``"mixture"`` with N < d and tiny sigma^2 = e^-30: S = Cov(mu) + diag(1e-13) has condition
    ~1e13. The low-rank path (the default for N <= d: its capacitance matrix is as well
    conditioned as the data) gives the 50-digit value to 1e-13; the dense reference path, like
    the float64 NumPy oracle, loses digits (about 1e-6 here). At sigma^2 = e^-60 S is singular
    to float64 precision: the dense path raises, the low-rank path is still exact."""
    mu, _, _ = _posteriors(8, 20, seed=4)
    for level in (-30.0, -60.0):
        logvar = torch.full_like(mu, level)
        exact = exact_mixture_full_kl(mu, logvar)
        kl = _full(mu, logvar, None, "mixture")
        assert kl.item() == pytest.approx(exact, rel=1e-13)
        inputs = [t.clone().requires_grad_() for t in (mu, logvar)]
        grads = torch.autograd.grad(_full(*inputs, None, "mixture"), inputs)
        assert all(torch.isfinite(g).all() for g in grads)
    logvar = torch.full_like(mu, -30.0)
    dense = _full(mu, logvar, None, "mixture", False)
    assert dense.item() == pytest.approx(exact_mixture_full_kl(mu, logvar), rel=1e-5)
    with pytest.raises(ValueError, match="singular"):
        _full(mu, torch.full_like(mu, -60.0), None, "mixture", False)


def test_non_finite_inputs_raise() -> None:
    mu, logvar, z = _posteriors(20, 3)
    mu[4, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        _full(mu, logvar, z, "means")


# ---------------------------------------------------------------- layouts and modules


def test_spatial_pattern_equals_flattened_positions() -> None:
    """``"b c h w -> (b h w) c"``: every position is a sample of a c-dim latent."""
    g = torch.Generator().manual_seed(8)
    mu = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64) + 0.2
    logvar = torch.randn(mu.shape, generator=g, dtype=torch.float64) * 0.1
    pattern = "b c h w -> (b h w) c"
    flat = [t.permute(0, 2, 3, 1).reshape(-1, 4) for t in (mu, logvar)]
    for variance in ("mixture", "means", "sample"):
        got = _full(mu, logvar, mu, variance, pattern=pattern)
        want = _oracle(flat[0], flat[1], flat[0], variance)
        assert got.item() == pytest.approx(want, rel=1e-12)
        module = MixtureKL(variance=variance, covariance="full", pattern=pattern)
        torch.testing.assert_close(module(mu, logvar, mu), got)


def test_modules_pass_covariance_on() -> None:
    mu, logvar, z = _posteriors(16, 8, seed=9)
    want = _full(mu, logvar, z, "mixture")
    torch.testing.assert_close(MixtureKL(covariance="full")(mu, logvar, z), want)
    assert "covariance='full'" in repr(MixtureKL(covariance="full"))
    assert "covariance" not in repr(MixtureKL())  # the diagonal default's repr is unchanged
    elbo = RegularizedELBO(beta4=0.0, covariance="full")
    x = torch.rand(16, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(elbo(x, x, mu, logvar, z).kl_g, want)
    paper = RegularizedELBO.paper(beta4=0.0, covariance="full")
    torch.testing.assert_close(paper.kl_g(mu, logvar, z), _full(mu, logvar, z, "sample"))


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="covariance must be one of 'diagonal', 'full'"):
        MixtureKL(covariance="dense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction='none'"):
        MixtureKL(covariance="full", reduction="none")
    mu, logvar, z = _posteriors(8, 2)
    with pytest.raises(ValueError, match="covariance must be one of"):
        F.mixture_kl(mu, logvar, covariance="dense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction='none'"):
        _full(mu, logvar, z, "mixture", reduction="none")


@pytest.mark.cuda
@pytest.mark.parametrize("variance", VARIANCES)
def test_cuda_matches_cpu(variance: str) -> None:
    for n, d in ((256, 32), (32, 64)):
        if n <= d and variance != "mixture":
            continue
        cpu = [t.requires_grad_() for t in _posteriors(n, d, seed=6)]
        gpu = [t.detach().float().cuda().requires_grad_() for t in cpu]
        kl_cpu, kl_gpu = _full(*cpu, variance), _full(*gpu, variance)
        assert kl_gpu.device.type == "cuda"
        assert kl_gpu.item() == pytest.approx(kl_cpu.item(), rel=1e-5)
        got = torch.autograd.grad(kl_gpu, gpu, allow_unused=True)
        want = torch.autograd.grad(kl_cpu, cpu, allow_unused=True)
        for a, b in zip(got, want, strict=True):
            if a is not None and b is not None:
                torch.testing.assert_close(a.cpu().double(), b, rtol=1e-4, atol=1e-6)
