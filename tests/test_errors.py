"""Every bad input raises ValueError naming the argument and what was received."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from mixelbo import (
    GaussianKL,
    IndividualVarianceKL,
    MixtureKL,
    PatchDiscriminator,
    PatchGANLoss,
    RegularizedELBO,
)
from mixelbo import functional as F

MU = torch.randn(4, 3)
LOGVAR = torch.zeros(4, 3)
Z = torch.randn(4, 3)


def _raises(call: Callable[[], Any], *fragments: str) -> None:
    """``call()`` raises ValueError whose message contains every fragment, literally."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------- shape mismatches


@pytest.mark.parametrize("variance", ["sample", "means", "mixture"])
def test_mixture_kl_shape_mismatch(variance: str) -> None:
    _raises(
        lambda: F.mixture_kl(MU, torch.zeros(4, 2), Z, variance=variance),
        "logvar",
        "(4, 2)",
        "(4, 3)",
    )
    if variance == "sample":
        _raises(lambda: F.mixture_kl(MU, LOGVAR, torch.zeros(5, 3)), "z", "(5, 3)", "(4, 3)")


def test_gaussian_kl_shape_mismatch() -> None:
    _raises(lambda: F.gaussian_kl(MU, torch.zeros(3, 4)), "logvar", "(3, 4)", "(4, 3)")
    _raises(lambda: GaussianKL()(MU, torch.zeros(4)), "logvar", "(4,)")


def test_module_shape_mismatch() -> None:
    _raises(lambda: MixtureKL(variance="sample")(MU, LOGVAR, Z[:, :2]), "z", "(4, 2)")
    elbo = RegularizedELBO(beta4=0.0)
    x = torch.rand(4, 1, 8, 8)
    _raises(lambda: elbo(x, x[..., :4], MU, LOGVAR, Z), "x_hat", "(4, 1, 8, 4)", "(4, 1, 8, 8)")
    _raises(lambda: elbo(x, x, MU, LOGVAR[:, :2], Z), "logvar", "(4, 2)")


# ---------------------------------------------------------------- too few samples


@pytest.mark.parametrize("variance", ["sample", "means", "mixture"])
def test_fewer_than_two_samples(variance: str) -> None:
    one = torch.zeros(1, 3)
    _raises(
        lambda: F.mixture_kl(one, one, one, variance=variance),
        "mu",
        "at least 2 samples",
        "got 1",
    )
    _raises(lambda: MixtureKL(variance)(one, one, one), "mu", "got 1")
    _raises(lambda: F.batch_moments(one, one, one, variance=variance), "got 1")
    image = torch.zeros(1, 2, 3, 3)
    _raises(
        lambda: F.mixture_kl(image, image, image, pattern="b c h w -> b (c h w)"),
        "got 1",
        "(1, 18)",
    )
    _raises(lambda: F.active_units(one), "mu", "got 1")


def test_one_image_with_spatial_samples_is_fine() -> None:
    """The counterpart: one image whose 9 positions are samples has enough samples."""
    image = torch.zeros(1, 2, 3, 3)
    assert F.mixture_kl(image, image, image, pattern="b c h w -> (b h w) c").item() > 0


# ---------------------------------------------------------------- missing tensors


def test_sample_variance_needs_z() -> None:
    _raises(lambda: F.mixture_kl(MU, LOGVAR), "z", 'variance="sample"', "None")
    _raises(lambda: F.batch_moments(MU, LOGVAR), "z", "None")
    _raises(lambda: MixtureKL(variance="sample")(MU, LOGVAR), "z", "None")
    _raises(lambda: RegularizedELBO.paper(beta4=0.0)(MU, MU, MU, LOGVAR), "z", "None")


def test_mixture_variance_needs_logvar() -> None:
    _raises(lambda: F.mixture_kl(MU, None, variance="mixture"), "logvar", "None")
    _raises(lambda: MixtureKL("mixture")(MU, None), "logvar", "None")


# ---------------------------------------------------------------- non-floating dtypes


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_non_floating_dtypes(dtype: torch.dtype) -> None:
    bad = torch.zeros(4, 3, dtype=dtype)
    name = str(dtype)
    _raises(lambda: F.mixture_kl(bad, LOGVAR, Z), "mu", name, "(4, 3)")
    _raises(lambda: F.mixture_kl(MU, LOGVAR, bad), "z", name, "(4, 3)")
    _raises(lambda: F.mixture_kl(MU, bad, Z), "logvar", name)
    _raises(lambda: F.mixture_kl(MU, bad, variance="mixture"), "logvar", name)
    _raises(lambda: F.mixture_kl(MU, bad, variance="means"), "logvar", name)
    _raises(lambda: F.individual_variance_kl(bad), "logvar", name, "(4, 3)")
    _raises(lambda: F.gaussian_kl(bad, LOGVAR), "mu", name)
    _raises(lambda: F.gaussian_kl(MU, bad), "logvar", name)
    _raises(lambda: F.kl_per_dim(bad, LOGVAR), "mu", name)
    _raises(lambda: F.active_units(bad), "mu", name)
    _raises(lambda: F.mean_posterior_sigma(bad), "logvar", name)
    _raises(lambda: F.adversarial_generator_loss(bad), "fake_logits", name)
    _raises(lambda: F.adversarial_discriminator_loss(bad, LOGVAR), "real_logits", name)
    _raises(lambda: F.adversarial_discriminator_loss(LOGVAR, bad), "fake_logits", name)
    _raises(lambda: IndividualVarianceKL()(bad), "logvar", name)
    image = torch.zeros(4, 1, 8, 8)
    _raises(
        lambda: RegularizedELBO(beta4=0.0)(image, image.to(dtype), MU, LOGVAR, Z), "x_hat", name
    )


def test_complex_and_non_tensor_inputs() -> None:
    _raises(lambda: F.individual_variance_kl(LOGVAR.to(torch.complex64)), "logvar", "complex64")
    _raises(lambda: F.gaussian_kl(MU.tolist(), LOGVAR), "mu", "list")
    _raises(lambda: F.mixture_kl(MU.numpy(), LOGVAR, Z), "mu", "ndarray")


# ---------------------------------------------------------------- unknown options

UNKNOWN = "bogus"


@pytest.mark.parametrize(
    ("build", "argument", "value"),
    [
        (lambda: MixtureKL(variance=UNKNOWN), "variance", UNKNOWN),
        (lambda: MixtureKL(reduction="batchmean"), "reduction", "batchmean"),
        (lambda: IndividualVarianceKL(form=UNKNOWN), "form", UNKNOWN),
        (lambda: IndividualVarianceKL(reduction=UNKNOWN), "reduction", UNKNOWN),
        (lambda: GaussianKL(reduction=UNKNOWN), "reduction", UNKNOWN),
        (lambda: PatchGANLoss(loss=UNKNOWN), "loss", UNKNOWN),
        (lambda: RegularizedELBO(variance=UNKNOWN), "variance", UNKNOWN),
        (lambda: MixtureKL(covariance=UNKNOWN), "covariance", UNKNOWN),
        (lambda: RegularizedELBO(covariance=UNKNOWN), "covariance", UNKNOWN),
        (lambda: RegularizedELBO(kl_i_form=UNKNOWN), "form", UNKNOWN),
        (lambda: RegularizedELBO(kl_i_reduction="none"), "kl_i_reduction", "none"),
        (
            lambda: RegularizedELBO(reconstruction_reduction=UNKNOWN),
            "reconstruction_reduction",
            UNKNOWN,
        ),
        (lambda: RegularizedELBO.paper(variance=UNKNOWN), "variance", UNKNOWN),
        (
            lambda: RegularizedELBO.authors_code(kl_i_reduction=UNKNOWN),
            "kl_i_reduction",
            UNKNOWN,
        ),
    ],
)
def test_unknown_module_options(build: Callable[[], Any], argument: str, value: str) -> None:
    _raises(build, f"{argument} must be one of", f"got {value!r}")


@pytest.mark.parametrize(
    ("call", "argument", "value"),
    [
        (lambda: F.batch_moments(MU, LOGVAR, Z, variance=UNKNOWN), "variance", UNKNOWN),
        (lambda: F.mixture_kl(MU, LOGVAR, Z, variance=UNKNOWN), "variance", UNKNOWN),
        (lambda: F.mixture_kl(MU, LOGVAR, Z, covariance=UNKNOWN), "covariance", UNKNOWN),
        (
            lambda: F.mixture_kl(MU, LOGVAR, Z, variance=UNKNOWN, covariance="full"),
            "variance",
            UNKNOWN,
        ),
        (lambda: F.batch_covariance(MU, LOGVAR, Z, variance=UNKNOWN), "variance", UNKNOWN),
        (lambda: F.mixture_kl(MU, LOGVAR, Z, reduction="batchmean"), "reduction", "batchmean"),
        (lambda: F.individual_variance_kl(LOGVAR, form=UNKNOWN), "form", UNKNOWN),
        (lambda: F.individual_variance_kl(LOGVAR, reduction=UNKNOWN), "reduction", UNKNOWN),
        (lambda: F.gaussian_kl(MU, LOGVAR, reduction=UNKNOWN), "reduction", UNKNOWN),
        (lambda: F.adversarial_generator_loss(MU, UNKNOWN), "criterion", UNKNOWN),
        (lambda: F.adversarial_discriminator_loss(MU, MU, UNKNOWN), "criterion", UNKNOWN),
        (lambda: F.mixture_kl(MU, LOGVAR, Z, variance="Sample"), "variance", "Sample"),
        (lambda: F.mixture_kl(MU, LOGVAR, Z, variance=None), "variance", "None"),
    ],
)
def test_unknown_functional_options(call: Callable[[], Any], argument: str, value: str) -> None:
    _raises(call, argument, f"got {value!r}" if value != "None" else "got None")


def test_full_covariance_errors() -> None:
    """covariance="full": no per-dim KL, and no full-rank covariance from N <= d samples."""
    for call in (
        lambda: MixtureKL(covariance="full", reduction="none"),
        lambda: F.mixture_kl(MU, LOGVAR, Z, covariance="full", reduction="none"),
    ):
        _raises(call, "reduction='none'", "covariance='full'")
    mu, logvar, z = torch.randn(4, 5), torch.zeros(4, 5), torch.randn(4, 5)
    for variance in ("sample", "means"):
        _raises(
            lambda v=variance: F.mixture_kl(mu, logvar, z, variance=v, covariance="full"),
            f"variance={variance!r}",
            "N=4 samples <= d=5 dims",
            "variance='mixture'",
            "covariance='diagonal'",
        )
    _raises(lambda: MixtureKL("means", covariance="full")(MU[:3], LOGVAR[:3]), "N=3", "d=3")
    _raises(lambda: F.batch_covariance(MU[:1], LOGVAR[:1], variance="mixture"), "at least 2")


def test_patch_discriminator_layout() -> None:
    _raises(lambda: PatchDiscriminator(channels=(8, 8), strides=(2,)), "channels", "strides")
    _raises(lambda: PatchDiscriminator(channels=(), strides=()), "non-empty")


def test_discriminator_loss_without_adversarial_term() -> None:
    _raises(lambda: RegularizedELBO(beta4=0.0).discriminator_loss(MU, MU), "beta4=0")


# ---------------------------------------------------------------- bad patterns


@pytest.mark.parametrize(
    ("pattern", "fragments"),
    [
        ("b (c -> b c", ["b (c -> b c", "mu", "(4, 3)"]),  # not einops syntax
        ("b c h w -> (b h w) c", ["b c h w -> (b h w) c", "mu", "(4, 3)"]),  # wrong rank
        ("b c -> b c d", ["b c -> b c d", "mu"]),  # identifier on one side
        ("b c -> (b c)", ["(samples, dims)", "(12,)"]),  # not a matrix
        ("b c -> b c ()", ["(samples, dims)", "(4, 3, 1)"]),
    ],
)
def test_bad_pattern(pattern: str, fragments: list[str]) -> None:
    _raises(lambda: F.mixture_kl(MU, LOGVAR, Z, pattern=pattern), *fragments)
    _raises(lambda: MixtureKL(pattern=pattern)(MU, LOGVAR, Z), *fragments[:1])
    _raises(lambda: F.individual_variance_kl(MU, pattern=pattern), *fragments[:1])
    _raises(lambda: F.gaussian_kl(MU, LOGVAR, pattern=pattern), *fragments[:1])


def test_missing_latent_axis() -> None:
    flat = torch.zeros(4)
    _raises(lambda: F.individual_variance_kl(flat), "logvar", "(4,)", "pattern=")
    _raises(lambda: F.mixture_kl(flat, flat, flat), "mu", "(4,)")
