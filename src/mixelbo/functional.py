"""The paper's loss terms as pure functions (the eager reference path).

Equation numbers refer to M. Rivera, "How to train your VAE", ICIP 2024. All latent tensors
have the batch first; by default every other axis is a latent dimension, and ``pattern`` (an
einops expression) maps other layouts to ``(samples, dims)``. Reductions accumulate in float32
for float16/bfloat16 inputs (float64 stays float64) and return that dtype.

Example:
    >>> import torch
    >>> from mixelbo import functional as F
    >>> mu, logvar = torch.zeros(8, 4), torch.zeros(8, 4)
    >>> F.individual_variance_kl(logvar)  # posteriors equal to N(mu, I): no penalty
    tensor(0.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as torch_f
from torch import Tensor

from mixelbo._validation import (
    as_samples,
    check_floating,
    check_min_samples,
    check_option,
    check_same_shape,
)

__all__ = [
    "active_units",
    "adversarial_discriminator_loss",
    "adversarial_generator_loss",
    "batch_moments",
    "gaussian_kl",
    "individual_variance_kl",
    "kl_per_dim",
    "mean_posterior_sigma",
    "mixture_kl",
]

Variance = Literal["sample", "means", "mixture"]
DimReduction = Literal["sum", "mean", "none"]
ElementReduction = Literal["sum", "batchmean", "mean", "none"]
Criterion = Literal["bce", "hinge", "lsgan"]

VARIANCES = ("sample", "means", "mixture")
DIM_REDUCTIONS = ("sum", "mean", "none")
ELEMENT_REDUCTIONS = ("sum", "batchmean", "mean", "none")
CRITERIA = ("bce", "hinge", "lsgan")


def _reduce_dims(per_dim: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return per_dim.sum()
    if reduction == "mean":
        return per_dim.mean()
    return per_dim


def _reduce_elements(elements: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return elements.sum()
    if reduction == "batchmean":
        return elements.sum() / elements.shape[0]
    if reduction == "mean":
        return elements.mean()
    return elements


def batch_moments(
    mu: Tensor,
    logvar: Tensor | None = None,
    z: Tensor | None = None,
    *,
    variance: Variance = "sample",
    pattern: str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Mean and variance of the batch-aggregate posterior, per latent dimension (eqs. 17-18).

    The aggregate posterior is the equal-weight mixture of the individual posteriors
    :math:`\mathcal N(\mu^{(i)}, \sigma^{(i)2})` (eq. 14). Its mean is estimated by eq. 17,

    .. math:: \bar\mu_j = \frac1N \sum_i \mu^{(i)}_j,

    and its variance by one of three estimators (all population, 1/N):

    - ``"sample"``: eq. 18, :math:`\bar\sigma^2_j = \frac1N \sum_i (z^{(i)}_j - \bar\mu_j)^2`
      with the sampled latents ``z`` (unbiased for the mixture variance, noisy);
    - ``"means"``: :math:`\frac1N \sum_i (\mu^{(i)}_j - \bar\mu_j)^2`, the batch variance of
      the means, as the authors' public code computes it (ignores the individual variances);
    - ``"mixture"``: the exact variance of the mixture,
      :math:`\frac1N \sum_i \sigma^{(i)2}_j + \frac1N \sum_i (\mu^{(i)}_j - \bar\mu_j)^2`.

    Every estimator is formed from centred deviations (never :math:`E[z^2] - E[z]^2`), so it
    does not cancel catastrophically when :math:`|\bar\mu| \gg \bar\sigma`.

    Args:
        mu: posterior means, ``(N, ...)``.
        logvar: posterior log-variances :math:`\log\sigma^2`, shape of ``mu``; required by
            ``variance="mixture"``.
        z: sampled latents, shape of ``mu``; required by ``variance="sample"``.
        variance: the estimator, ``"sample"``, ``"means"`` or ``"mixture"``.
        pattern: einops pattern mapping the inputs to ``(samples, dims)``.

    Returns:
        ``(mean, var)``, each of shape ``(dims,)`` in the accumulation dtype (float32 for
        half-precision inputs).

    Raises:
        ValueError: on an unknown ``variance``, a missing ``z``/``logvar``, shape mismatch,
            non-floating dtype, or fewer than 2 samples.

    Example:
        >>> import torch
        >>> mu = torch.tensor([[1.0], [3.0]])
        >>> batch_moments(mu, torch.zeros(2, 1), variance="mixture")
        (tensor([2.]), tensor([2.]))
    """
    check_option("variance", variance, VARIANCES)
    mu_s = as_samples("mu", mu, pattern)
    check_min_samples("mu", mu_s)
    mean = mu_s.mean(0)  # eq. 17
    if variance == "sample":
        if z is None:
            raise ValueError('variance="sample" (eq. 18) needs the sampled latents z; got z=None')
        check_floating("z", z)
        check_same_shape("z", z, "mu", mu)
        deviation = as_samples("z", z, pattern) - mean
        return mean, deviation.square().mean(0)  # eq. 18
    spread_of_means = (mu_s - mean).square().mean(0)
    if variance == "means":
        return mean, spread_of_means
    if logvar is None:
        raise ValueError('variance="mixture" needs logvar; got logvar=None')
    check_floating("logvar", logvar)
    check_same_shape("logvar", logvar, "mu", mu)
    mean_individual_variance = as_samples("logvar", logvar, pattern).exp().mean(0)
    return mean, mean_individual_variance + spread_of_means


def mixture_kl(
    mu: Tensor,
    logvar: Tensor | None = None,
    z: Tensor | None = None,
    *,
    variance: Variance = "sample",
    reduction: DimReduction = "sum",
    pattern: str | None = None,
) -> Tensor:
    r"""KL_G of eq. 19: the batch-aggregate posterior against the prior :math:`\mathcal N(0, I)`.

    .. math::
        \mathrm{KL}_G = \frac12 \sum_{j=1}^d
            \left[\bar\sigma_j^2 + \bar\mu_j^2 - 1 - \log\bar\sigma_j^2\right]

    with :math:`\bar\mu, \bar\sigma^2` from :func:`batch_moments` (eqs. 17-18). Unlike the
    standard KL (eq. 10) it pulls the *mean* of the posterior means to zero, not each mean.
    The aggregate variance is clamped below at the dtype's smallest normal number, so a
    degenerate batch (all latents equal) gives a large finite loss instead of ``inf``.

    Args:
        mu, logvar, z, variance, pattern: as in :func:`batch_moments`.
        reduction: over latent dims, ``"sum"`` (eq. 19), ``"mean"`` or ``"none"``.

    Returns:
        A scalar, or the per-dimension KL of shape ``(dims,)`` for ``reduction="none"``.

    Shape:
        ``mu``, ``logvar``, ``z``: ``(N, ...)``, all the same; ``N >= 2`` samples.

    Raises:
        ValueError: as :func:`batch_moments`, and on an unknown ``reduction``.

    Example:
        >>> import torch
        >>> mu = torch.tensor([[-1.0], [1.0]])
        >>> mixture_kl(mu, torch.full((2, 1), -30.0), variance="mixture")  # N(0, 1): zero
        tensor(0.)
    """
    check_option("reduction", reduction, DIM_REDUCTIONS)
    mean, var = batch_moments(mu, logvar, z, variance=variance, pattern=pattern)
    var = var.clamp_min(torch.finfo(var.dtype).tiny)
    kl_per_dim = 0.5 * (var + mean.square() - 1.0 - var.log())  # eq. 19
    return _reduce_dims(kl_per_dim, reduction)


def individual_variance_kl(
    logvar: Tensor,
    *,
    form: Literal["paper", "kl"] = "paper",
    reduction: ElementReduction = "sum",
    pattern: str | None = None,
) -> Tensor:
    r"""KL_I of eq. 20: penalises individual posteriors that shrink towards a Dirac delta.

    .. math::
        \mathrm{KL}_I = \sum_i \sum_j \left[\sigma_j^{(i)2} - 1 - \log\sigma_j^{(i)2}\right]

    Each element is :math:`c\,(\sigma^2 - 1 - \log\sigma^2)` with :math:`c = 1` for
    ``form="paper"`` (eq. 20 as printed) and :math:`c = 1/2` for ``form="kl"``, the true
    :math:`\mathrm{KL}(\mathcal N(\mu, \sigma^2) \| \mathcal N(\mu, 1))`. It does not depend on
    :math:`\mu`. Evaluated as ``expm1(logvar) - logvar``, exact near :math:`\sigma = 1`.

    Args:
        logvar: posterior log-variances, ``(N, ...)``.
        form: ``"paper"`` or ``"kl"`` (half of it).
        reduction: ``"sum"`` (eq. 20), ``"batchmean"`` (sum over dims, mean over samples: the
            authors' public code), ``"mean"`` (over all elements) or ``"none"``.
        pattern: einops pattern mapping ``logvar`` to ``(samples, dims)``; decides what
            ``"batchmean"`` divides by and the shape of ``"none"``.

    Returns:
        A scalar, or the ``(samples, dims)`` elements for ``reduction="none"``.

    Raises:
        ValueError: on an unknown ``form`` or ``reduction``, or a non-floating ``logvar``.

    Example:
        >>> import torch
        >>> individual_variance_kl(torch.zeros(4, 3))
        tensor(0.)
    """
    check_option("form", form, ("paper", "kl"))
    check_option("reduction", reduction, ELEMENT_REDUCTIONS)
    logvar_s = as_samples("logvar", logvar, pattern)
    scale = 0.5 if form == "kl" else 1.0
    elements = scale * (torch.expm1(logvar_s) - logvar_s)  # eq. 20: sigma^2 - 1 - log sigma^2
    return _reduce_elements(elements, reduction)


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    *,
    reduction: ElementReduction = "batchmean",
    pattern: str | None = None,
) -> Tensor:
    r"""The standard VAE KL of eq. 10, each posterior against :math:`\mathcal N(0, I)`.

    .. math::
        \mathrm{KL} = \frac12 \sum_i \sum_j
            \left[\sigma_j^{(i)2} + \mu_j^{(i)2} - 1 - \log\sigma_j^{(i)2}\right]

    (Kingma and Welling 2014), the baseline of the VAE and beta-VAE objectives.

    Args:
        mu: posterior means, ``(N, ...)``.
        logvar: posterior log-variances, shape of ``mu``.
        reduction: ``"batchmean"`` (sum over dims, mean over samples; the usual choice),
            ``"sum"`` (eq. 10), ``"mean"`` or ``"none"``.
        pattern: einops pattern mapping the inputs to ``(samples, dims)``.

    Returns:
        A scalar, or the ``(samples, dims)`` elements for ``reduction="none"``.

    Raises:
        ValueError: on shape mismatch, non-floating dtypes or an unknown ``reduction``.

    Example:
        >>> import torch
        >>> gaussian_kl(torch.ones(2, 3), torch.zeros(2, 3))  # 3 dims x 1/2 per sample
        tensor(1.5000)
    """
    check_option("reduction", reduction, ELEMENT_REDUCTIONS)
    check_floating("logvar", logvar)
    check_same_shape("logvar", logvar, "mu", mu)
    mu_s = as_samples("mu", mu, pattern)
    logvar_s = as_samples("logvar", logvar, pattern)
    elements = 0.5 * (torch.expm1(logvar_s) + mu_s.square() - logvar_s)  # eq. 10
    return _reduce_elements(elements, reduction)


def kl_per_dim(mu: Tensor, logvar: Tensor, *, pattern: str | None = None) -> Tensor:
    r"""Diagnostic: the standard KL (eq. 10) of each latent dim, averaged over samples.

    Dimensions whose KL is near zero carry no information about the input (collapsed to the
    prior). Returns shape ``(dims,)``.

    Example:
        >>> import torch
        >>> kl_per_dim(torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.zeros(2, 2))
        tensor([0., 2.])
    """
    return gaussian_kl(mu, logvar, reduction="none", pattern=pattern).mean(0)


def active_units(mu: Tensor, *, threshold: float = 0.01, pattern: str | None = None) -> Tensor:
    r"""Diagnostic: number of active latent units (Burda, Grosse and Salakhutdinov 2016).

    A unit is active when :math:`\mathrm{Cov}_x(E_{q(z|x)}[z_j]) > \text{threshold}`, i.e.
    when the population variance over samples of the posterior mean exceeds ``threshold``
    (0.01 in the original). Pass the means of a whole evaluation set. Returns an int64 scalar.

    Example:
        >>> import torch
        >>> active_units(torch.tensor([[0.0, -1.0], [0.0, 1.0]]))
        tensor(1)
    """
    mu_s = as_samples("mu", mu, pattern)
    check_min_samples("mu", mu_s)
    activity = (mu_s - mu_s.mean(0)).square().mean(0)
    return (activity > threshold).sum()


def mean_posterior_sigma(logvar: Tensor, *, pattern: str | None = None) -> Tensor:
    r"""Diagnostic: the mean posterior standard deviation :math:`\frac{1}{Nd}\sum \sigma`.

    Near zero, the encoder has become deterministic (individual posteriors collapsed to Dirac
    deltas, what eq. 20 prevents); near one for every dim, posteriors collapsed to the prior.

    Example:
        >>> import torch
        >>> mean_posterior_sigma(torch.zeros(3, 2))
        tensor(1.)
    """
    return as_samples("logvar", logvar, pattern).mul(0.5).exp().mean()


def adversarial_generator_loss(fake_logits: Tensor, criterion: Criterion = "bce") -> Tensor:
    r"""The generator's adversarial term of eq. 21, averaged over the patch-logit map.

    - ``"bce"``: :math:`H[\mathbf 1, \sigma(D(\hat x))]`
      :math:`= \mathrm{mean}\,\mathrm{softplus}(-D(\hat x))` (eq. 21), evaluated from logits;
    - ``"hinge"``: :math:`-\mathrm{mean}\, D(\hat x)` (Lim and Ye 2017; Miyato et al. 2018);
    - ``"lsgan"``: :math:`\mathrm{mean}\,(D(\hat x) - 1)^2` (Mao et al. 2017).

    Example:
        >>> import torch
        >>> adversarial_generator_loss(torch.zeros(1, 1, 2, 2))  # log 2
        tensor(0.6931)
    """
    check_option("criterion", criterion, CRITERIA)
    check_floating("fake_logits", fake_logits)
    logits = fake_logits.float() if fake_logits.dtype != torch.float64 else fake_logits
    if criterion == "bce":
        return torch_f.softplus(-logits).mean()  # -log sigmoid(l) = softplus(-l)
    if criterion == "hinge":
        return -logits.mean()
    return (logits - 1.0).square().mean()


def adversarial_discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, criterion: Criterion = "bce"
) -> Tensor:
    r"""The discriminator's loss of eq. 23, each part averaged over its patch-logit map.

    - ``"bce"``: :math:`H[\mathbf 1, \sigma(D(x))] + H[\mathbf 0, \sigma(D(\hat x))]` (eq. 23)
      :math:`= \mathrm{mean}\,\mathrm{softplus}(-D(x))`
      :math:`+ \mathrm{mean}\,\mathrm{softplus}(D(\hat x))`;
    - ``"hinge"``: :math:`\mathrm{mean}\,\mathrm{relu}(1 - D(x))`
      :math:`+ \mathrm{mean}\,\mathrm{relu}(1 + D(\hat x))`;
    - ``"lsgan"``: :math:`\mathrm{mean}\,(D(x) - 1)^2 + \mathrm{mean}\,D(\hat x)^2`.

    Example:
        >>> import torch
        >>> adversarial_discriminator_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
        tensor(1.3863)
    """
    check_option("criterion", criterion, CRITERIA)
    check_floating("real_logits", real_logits)
    check_floating("fake_logits", fake_logits)
    real = real_logits.float() if real_logits.dtype != torch.float64 else real_logits
    fake = fake_logits.float() if fake_logits.dtype != torch.float64 else fake_logits
    if criterion == "bce":
        return torch_f.softplus(-real).mean() + torch_f.softplus(fake).mean()
    if criterion == "hinge":
        return torch_f.relu(1.0 - real).mean() + torch_f.relu(1.0 + fake).mean()
    return (real - 1.0).square().mean() + fake.square().mean()
