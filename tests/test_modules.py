"""The nn.Module wrappers: values against the float64 oracles for every option,
``torch.autograd.gradcheck`` for every module and option, and ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import itertools

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
)
from torch.autograd import gradcheck

from mixelbo import (
    GaussianKL,
    IndividualVarianceKL,
    MixtureKL,
    PatchDiscriminator,
    PatchGANLoss,
    RegularizedELBO,
)
from mixelbo import functional as F

VARIANCES = ("sample", "means", "mixture")
DIM_REDUCTIONS = ("sum", "mean", "none")
ELEMENT_REDUCTIONS = ("sum", "batchmean", "mean", "none")
FORMS = ("paper", "kl")
CRITERIA = ("bce", "hinge", "lsgan")
MIXTURE_OPTIONS = list(itertools.product(VARIANCES, DIM_REDUCTIONS))
INDIVIDUAL_OPTIONS = list(itertools.product(FORMS, ELEMENT_REDUCTIONS))


def _posterior(n: int = 6, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    z = mu + torch.randn(n, d, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    return mu, logvar, z


def _tiny_discriminator() -> PatchDiscriminator:
    """Two stride-2 layers, no dropout, float64: deterministic and cheap enough for gradcheck."""
    return PatchDiscriminator(in_channels=1, channels=(2, 2), strides=(2, 2), dropout=0.0).double()


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(("variance", "reduction"), MIXTURE_OPTIONS)
def test_mixture_kl_module_matches_oracle(variance: str, reduction: str) -> None:
    mu, logvar, z = _posterior()
    module = MixtureKL(variance=variance, reduction=reduction)
    assert list(module.parameters()) == []
    assert f"variance={variance!r}" in repr(module)
    m, lv, zz = f64(mu), f64(logvar), f64(z)
    var = {
        "sample": lambda: eq18_variance(zz, m),
        "means": lambda: means_variance(m),
        "mixture": lambda: mixture_variance(m, lv),
    }[variance]()
    expected = reduce_dims(eq19_kl_g(eq17_mean(m), var), reduction)
    np.testing.assert_allclose(module(mu, logvar, z).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(("form", "reduction"), INDIVIDUAL_OPTIONS)
def test_individual_variance_kl_module_matches_oracle(form: str, reduction: str) -> None:
    _, logvar, _ = _posterior()
    module = IndividualVarianceKL(form=form, reduction=reduction)
    assert f"form={form!r}" in repr(module)
    scale = 0.5 if form == "kl" else 1.0
    expected = reduce_elements(scale * eq20_elements(f64(logvar)), reduction)
    np.testing.assert_allclose(module(logvar).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("reduction", ELEMENT_REDUCTIONS)
def test_gaussian_kl_module_matches_oracle(reduction: str) -> None:
    mu, logvar, _ = _posterior()
    module = GaussianKL(reduction=reduction)
    expected = reduce_elements(eq10_elements(f64(mu), f64(logvar)), reduction)
    np.testing.assert_allclose(module(mu, logvar).numpy(), expected, rtol=1e-12)


def test_module_defaults_are_the_recommended_configuration() -> None:
    # issue 10: per-image KL_I and the exact mixture variance (docs/collapse.md)
    assert (MixtureKL().variance, MixtureKL().reduction, MixtureKL().pattern) == (
        "mixture",
        "sum",
        None,
    )
    assert (IndividualVarianceKL().form, IndividualVarianceKL().reduction) == (
        "paper",
        "batchmean",
    )
    assert GaussianKL().reduction == "batchmean"
    assert PatchGANLoss().loss == "bce"
    assert isinstance(PatchGANLoss().discriminator, PatchDiscriminator)


def test_module_pattern_is_passed_through() -> None:
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    pattern = "b c h w -> (b h w) c"
    m = f64(mu).transpose(0, 2, 3, 1).reshape(-1, 3)
    lv = f64(logvar).transpose(0, 2, 3, 1).reshape(-1, 3)
    got = MixtureKL("mixture", "none", pattern)(mu, logvar)
    np.testing.assert_allclose(got.numpy(), eq19_kl_g(eq17_mean(m), mixture_variance(m, lv)))
    got_i = IndividualVarianceKL(reduction="batchmean", pattern=pattern)(logvar)
    np.testing.assert_allclose(got_i.item(), eq20_elements(lv).sum() / 32)
    got_g = GaussianKL(pattern=pattern)(mu, logvar)
    np.testing.assert_allclose(got_g.item(), eq10_elements(m, lv).sum() / 32)


# ---------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize(("variance", "reduction"), MIXTURE_OPTIONS)
def test_gradcheck_mixture_kl(variance: str, reduction: str) -> None:
    inputs = tuple(t.requires_grad_() for t in _posterior(5, 3, seed=2))
    module = MixtureKL(variance=variance, reduction=reduction)
    assert gradcheck(module, inputs)


@pytest.mark.parametrize(("form", "reduction"), INDIVIDUAL_OPTIONS)
def test_gradcheck_individual_variance_kl(form: str, reduction: str) -> None:
    logvar = _posterior(5, 3, seed=3)[1].requires_grad_()
    assert gradcheck(IndividualVarianceKL(form=form, reduction=reduction), (logvar,))


@pytest.mark.parametrize("reduction", ELEMENT_REDUCTIONS)
def test_gradcheck_gaussian_kl(reduction: str) -> None:
    mu, logvar, _ = (t.requires_grad_() for t in _posterior(5, 3, seed=4))
    assert gradcheck(GaussianKL(reduction=reduction), (mu, logvar))


def test_gradcheck_spatial_pattern() -> None:
    g = torch.Generator().manual_seed(5)
    shape = (2, 3, 2, 2)
    mu, logvar, z = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    pattern = "b c h w -> (b h w) c"
    for variance in VARIANCES:
        module = MixtureKL(variance, pattern=pattern)
        assert gradcheck(module, (mu.requires_grad_(), logvar.requires_grad_(), z.requires_grad_()))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_gradcheck_adversarial_losses(criterion: str) -> None:
    g = torch.Generator().manual_seed(6)
    real = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda f: F.adversarial_generator_loss(f, criterion), (fake,))
    assert gradcheck(
        lambda r, f: F.adversarial_discriminator_loss(r, f, criterion),
        (real, fake),
    )
    # through the PatchGAN module, with respect to the images it scores
    torch.manual_seed(0)
    loss = PatchGANLoss(_tiny_discriminator(), loss=criterion)
    image = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert gradcheck(loss, (image,))
    real_image = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    fake_image = image.detach()
    assert gradcheck(lambda r: loss.discriminator_loss(r, fake_image), (real_image,))


@pytest.mark.parametrize("variance", VARIANCES)
def test_gradcheck_regularized_elbo(variance: str) -> None:
    torch.manual_seed(0)
    adversarial = PatchGANLoss(_tiny_discriminator())
    elbo = RegularizedELBO(
        1.0,
        0.5,
        3.0,
        2.0,
        variance=variance,
        kl_i_form="kl",
        adversarial=adversarial,
    )
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    x_hat = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mu, logvar, z = (t.requires_grad_() for t in _posterior(2, 4, seed=8))
    assert gradcheck(lambda *a: elbo(x, *a).total, (x_hat, mu, logvar, z))


# ---------------------------------------------------------------- torch.compile(fullgraph=True)


@pytest.fixture
def fresh_dynamo() -> None:
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_fullgraph_every_kl_module_and_option() -> None:
    """One graph that calls every KL module and functional with every option: no graph break.

    backend="aot_eager" traces forward and backward with AOTAutograd (what Inductor gets) but
    skips code generation, which takes minutes on a 2-core CPU.
    """
    mixture = [MixtureKL(v, r) for v, r in MIXTURE_OPTIONS]
    individual = [IndividualVarianceKL(f, r) for f, r in INDIVIDUAL_OPTIONS]
    gaussian = [GaussianKL(r) for r in ELEMENT_REDUCTIONS]
    spatial = MixtureKL("mixture", pattern="b c h w -> (b h w) c")

    def losses(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        out = [m(mu, logvar, z) for m in mixture]
        out += [m(logvar) for m in individual]
        out += [m(mu, logvar) for m in gaussian]
        out.append(spatial(mu.view(2, 4, 1, 3), logvar.view(2, 4, 1, 3)))
        mean, var = F.batch_moments(mu, logvar, z)
        out += [mean, var, F.kl_per_dim(mu, logvar), F.mean_posterior_sigma(logvar)]
        out.append(F.active_units(mu))
        return out

    mu, logvar, z = (t.float().requires_grad_() for t in _posterior(2, 12, seed=9))
    compiled = torch.compile(losses, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(mu, logvar, z), losses(mu, logvar, z), strict=True):
        torch.testing.assert_close(got, expected)
    total = sum(t.float().sum() for t in compiled(mu, logvar, z)[:-1])
    (grad_mu,) = torch.autograd.grad(total, mu)
    assert torch.isfinite(grad_mu).all()


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("criterion", CRITERIA)
def test_compile_fullgraph_adversarial(criterion: str) -> None:
    torch.manual_seed(0)
    loss = PatchGANLoss(PatchDiscriminator(3, (8, 8, 8), (2, 2, 2)), loss=criterion).eval()
    real, fake = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)

    def both(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loss.generator_loss(fake), loss.discriminator_loss(real, fake)

    compiled = torch.compile(both, fullgraph=True, backend="eager")
    for got, expected in zip(compiled(real, fake), both(real, fake), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("preset", ["paper", "authors_code"])
def test_compile_fullgraph_regularized_elbo(preset: str) -> None:
    torch.manual_seed(0)
    adversarial = PatchGANLoss(PatchDiscriminator(3, (8, 8, 8), (2, 2, 2)))
    elbo = getattr(RegularizedELBO, preset)(adversarial=adversarial).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    x_hat = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    mu, logvar, z = (t.float() for t in _posterior(4, 8, seed=10))
    compiled = torch.compile(elbo, fullgraph=True, backend="aot_eager")
    got = compiled(x, x_hat, mu, logvar, z)
    expected = elbo(x, x_hat, mu, logvar, z)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    got.total.backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all()
    d_compiled = torch.compile(elbo.discriminator_loss, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(d_compiled(x, x_hat), elbo.discriminator_loss(x, x_hat))


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_inductor_mixture_kl() -> None:
    """The one real Inductor compile (C++ code generation on CPU): KL_G, forward and backward."""
    mu, logvar, z = (t.float().requires_grad_() for t in _posterior(64, 16, seed=11))
    module = MixtureKL("sample")
    compiled = torch.compile(module, fullgraph=True)
    got = compiled(mu, logvar, z)
    m, zz = f64(mu), f64(z)
    expected = float(np.sum(eq19_kl_g(eq17_mean(m), eq18_variance(zz, m))))
    np.testing.assert_allclose(got.item(), expected, rtol=1e-5)
    got.backward()
    assert mu.grad is not None and z.grad is not None
    # d KL_G / d z_i = (1 - 1 / var) (z_i - mean) / N, eq. 19 differentiated through eq. 18
    var = eq18_variance(zz, m)
    expected_grad_z = (1 - 1 / var) * (zz - eq17_mean(m)) / zz.shape[0]
    np.testing.assert_allclose(z.grad.numpy(), expected_grad_z, rtol=1e-4, atol=1e-7)
