"""RegularizedELBO (eq. 22) and its presets, against the oracles and the facts file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import (
    eq17_mean,
    eq18_variance,
    eq19_kl_g,
    eq20_elements,
    f64,
    means_variance,
    mixture_variance,
    reduce_elements,
)
from torch import nn

from mixelbo import ELBOTerms, PatchDiscriminator, PatchGANLoss, RegularizedELBO


def _batch(seed: int = 0, n: int = 4, d: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    x_hat = (x + 0.2 * torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)).clamp(-1, 1)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 - 1
    z = mu + torch.randn(n, d, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    return x, x_hat, mu, logvar, z


def _small_adversarial() -> PatchGANLoss:
    torch.manual_seed(0)
    return PatchGANLoss(PatchDiscriminator(3, (8, 8, 8), (2, 2, 2), dropout=0.0)).double()


def _neg_log_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(-x))


@pytest.mark.parametrize("variance", ["sample", "means", "mixture"])
@pytest.mark.parametrize("kl_i_reduction", ["sum", "batchmean", "mean"])
@pytest.mark.parametrize("reconstruction_reduction", ["sum", "batchmean", "mean"])
def test_terms_match_oracles_and_total_is_weighted_sum(
    variance: str, kl_i_reduction: str, reconstruction_reduction: str
) -> None:
    betas = (1.5, 0.25, 7.0, 3.0)
    elbo = RegularizedELBO(
        *betas,
        variance=variance,
        kl_i_reduction=kl_i_reduction,
        reconstruction_reduction=reconstruction_reduction,
        adversarial=_small_adversarial(),
    ).eval()
    x, x_hat, mu, logvar, z = _batch()
    terms = elbo(x, x_hat, mu, logvar, z)
    assert isinstance(terms, ELBOTerms)

    m, lv, zz = f64(mu), f64(logvar), f64(z)
    var = {
        "sample": lambda: eq18_variance(zz, m),
        "means": lambda: means_variance(m),
        "mixture": lambda: mixture_variance(m, lv),
    }[variance]()
    kl_g = np.sum(eq19_kl_g(eq17_mean(m), var))
    kl_i = reduce_elements(eq20_elements(lv), kl_i_reduction)
    abs_error = np.abs(f64(x) - f64(x_hat))
    reconstruction = {
        "sum": abs_error.sum(),
        "batchmean": abs_error.sum() / x.shape[0],
        "mean": abs_error.mean(),
    }[reconstruction_reduction]
    with torch.no_grad():
        fake_logits = f64(elbo.adversarial.discriminator(x_hat))
    adversarial = np.mean(_neg_log_sigmoid(fake_logits))  # H[1, D(x_hat)]

    np.testing.assert_allclose(terms.kl_g.item(), kl_g, rtol=1e-12)
    np.testing.assert_allclose(terms.kl_i.item(), kl_i, rtol=1e-12)
    np.testing.assert_allclose(terms.reconstruction.item(), reconstruction, rtol=1e-12)
    np.testing.assert_allclose(terms.adversarial.item(), adversarial, rtol=1e-12)
    b1, b2, b3, b4 = betas
    weighted = b1 * kl_g + b2 * kl_i + b3 * reconstruction + b4 * adversarial
    np.testing.assert_allclose(terms.total.item(), weighted, rtol=1e-12)  # eq. 22
    assert terms.adversarial_weight is None or terms.adversarial_weight.item() == 1.0
    returned = (
        b1 * terms.kl_g + b2 * terms.kl_i + b3 * terms.reconstruction + b4 * terms.adversarial
    )
    torch.testing.assert_close(terms.total, returned, rtol=1e-14, atol=0)


def test_paper_preset() -> None:
    """Eq. 22 with (beta1, beta2, beta3, beta4) = (1, 0.5, 1000, 100) and eq. 18's variance."""
    elbo = RegularizedELBO.paper()
    assert (elbo.beta1, elbo.beta2, elbo.beta3, elbo.beta4) == (1.0, 0.5, 1000.0, 100.0)
    assert elbo.kl_g.variance == "sample" and elbo.kl_g.reduction == "sum"
    assert elbo.kl_i.form == "paper" and elbo.kl_i.reduction == "sum"  # eq. 20: sum, no 1/2
    assert elbo.reconstruction_reduction == "mean"
    assert isinstance(elbo.adversarial, PatchGANLoss) and elbo.adversarial.loss == "bce"
    assert isinstance(elbo.adversarial.discriminator, PatchDiscriminator)


def test_authors_code_preset() -> None:
    """The facts file: variance of the means, 0.1 * KL_I summed over dims and averaged over the
    batch, 5000 * MAE over all pixels, 100 * BCE from logits averaged over the patch map."""
    elbo = RegularizedELBO.authors_code()
    assert (elbo.beta1, elbo.beta2, elbo.beta3, elbo.beta4) == (1.0, 0.1, 5000.0, 100.0)
    assert elbo.kl_g.variance == "means" and elbo.kl_g.reduction == "sum"
    assert elbo.kl_i.form == "paper" and elbo.kl_i.reduction == "batchmean"
    assert elbo.reconstruction_reduction == "mean"
    assert isinstance(elbo.adversarial, PatchGANLoss) and elbo.adversarial.loss == "bce"
    # the public code does not use z: the preset runs without it
    x, x_hat, mu, logvar, _ = (t.float() for t in _batch(1))
    assert torch.isfinite(elbo(x, x_hat, mu, logvar).total)


def test_preset_overrides() -> None:
    elbo = RegularizedELBO.paper(beta2=0.25, kl_i_form="kl", variance="mixture")
    assert elbo.beta2 == 0.25 and elbo.kl_i.form == "kl" and elbo.kl_g.variance == "mixture"
    assert elbo.beta3 == 1000.0  # the rest of the preset is kept


def test_beta4_zero_builds_no_discriminator() -> None:
    for elbo in (RegularizedELBO(beta4=0.0), RegularizedELBO.paper(beta4=0)):
        assert elbo.adversarial is None
        assert list(elbo.parameters()) == []
        x, x_hat, mu, logvar, z = _batch(2)
        terms = elbo(x, x_hat, mu, logvar, z)
        assert terms.adversarial.item() == 0.0
        expected = elbo.beta1 * terms.kl_g + elbo.beta2 * terms.kl_i
        torch.testing.assert_close(terms.total, expected + elbo.beta3 * terms.reconstruction)
        with pytest.raises(ValueError, match="beta4=0"):
            elbo.discriminator_loss(x, x_hat)
    assert sum(p.numel() for p in RegularizedELBO.paper().parameters()) > 400_000


@pytest.mark.parametrize("train", [False, True])
def test_discriminator_loss_is_beta4_times_eq23(train: bool) -> None:
    elbo = RegularizedELBO(beta4=3.0, adversarial=_small_adversarial()).train(train)
    x, x_hat, _, _, _ = _batch(3)
    x_hat = x_hat.clone().requires_grad_()
    discriminator = elbo.adversarial.discriminator
    with torch.no_grad():  # same mode, separate calls for real and fake as eq. 23 is written
        real, fake = discriminator(x), discriminator(x_hat)
    bce = nn.BCEWithLogitsLoss()
    eq23 = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
    loss = elbo.discriminator_loss(x, x_hat)
    torch.testing.assert_close(loss, 3.0 * eq23)
    loss.backward()
    assert x_hat.grad is None  # x_hat is detached inside: nothing reaches the VAE
    assert discriminator.layers[0].weight.grad is not None


def test_kl_i_term_ignores_mu() -> None:
    elbo = RegularizedELBO(beta4=0.0, variance="mixture")
    x, x_hat, mu, logvar, z = _batch(4)
    a = elbo(x, x_hat, mu, logvar, z)
    b = elbo(x, x_hat, mu + 5.0, logvar, z)
    assert a.kl_i.item() == b.kl_i.item()
    assert a.kl_g.item() != b.kl_g.item()  # KL_G, by contrast, sees the shifted mean


def test_gradients_reach_every_input() -> None:
    elbo = RegularizedELBO.paper(adversarial=_small_adversarial())
    x, x_hat, mu, logvar, z = _batch(5)
    inputs = [t.clone().requires_grad_() for t in (x_hat, mu, logvar, z)]
    elbo(x, *inputs).total.backward()
    for tensor in inputs:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0
