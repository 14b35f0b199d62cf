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

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as torch_f
from torch import Tensor

from mixelbo import _full_covariance, _fused
from mixelbo._validation import (
    ACCUMULATION_DTYPES,
    FLOATING_DTYPES,
    accumulation_dtype,
    as_samples,
    check_floating,
    check_min_samples,
    check_option,
    check_same_shape,
)

__all__ = [
    "active_units",
    "adaptive_adversarial_weight",
    "adversarial_discriminator_loss",
    "adversarial_generator_loss",
    "batch_covariance",
    "batch_moments",
    "gaussian_kl",
    "individual_variance_kl",
    "kl_per_dim",
    "mean_posterior_sigma",
    "mixture_kl",
    "r1_penalty",
]

Variance = Literal["sample", "means", "mixture"]
Covariance = Literal["diagonal", "full"]
DimReduction = Literal["sum", "mean", "none"]
ElementReduction = Literal["sum", "batchmean", "mean", "none"]
Criterion = Literal["bce", "hinge", "lsgan"]

VARIANCES = ("sample", "means", "mixture")
COVARIANCES = ("diagonal", "full")
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
            ``variance="mixture"``, and checked (shape, dtype) whenever it is given.
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
    return _moments(*_moment_samples(mu, logvar, z, variance, pattern), variance)


def _moments(
    mu_s: Tensor, logvar_s: Tensor | None, z_s: Tensor | None, variance: str
) -> tuple[Tensor, Tensor]:
    """Eqs. 17-18 from the ``(samples, dims)`` matrices of :func:`_moment_samples`."""
    mean = mu_s.mean(0)  # eq. 17
    if variance == "sample":
        assert z_s is not None
        deviation = z_s - mean
        return mean, deviation.square().mean(0)  # eq. 18
    spread_of_means = (mu_s - mean).square().mean(0)
    if variance == "means":
        return mean, spread_of_means
    assert logvar_s is not None
    mean_individual_variance = logvar_s.exp().mean(0)
    return mean, mean_individual_variance + spread_of_means


def batch_covariance(
    mu: Tensor,
    logvar: Tensor | None = None,
    z: Tensor | None = None,
    *,
    variance: Variance = "sample",
    pattern: str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Mean and full covariance of the batch-aggregate posterior (eqs. 17-18, all dims jointly).

    :func:`batch_moments` with the off-diagonal terms: with the eq. 17 mean
    :math:`m = \frac1N \sum_i \mu^{(i)}` and the centred deviations :math:`D_i = x^{(i)} - m`,
    the covariance :math:`S = \frac1N \sum_i D_i D_i^\top` (population, 1/N) of

    - ``"sample"``: the sampled latents, :math:`x = z` (eq. 18's deviations from eq. 17's mean);
    - ``"means"``: the posterior means, :math:`x = \mu`;
    - ``"mixture"``: the means, plus the mean individual variances on the diagonal,
      :math:`S = \frac1N \sum_i D_i D_i^\top + \operatorname{diag}(\frac1N \sum_i
      \sigma^{(i)2})`: the exact covariance of the batch's mixture (eq. 14).

    Its diagonal is :func:`batch_moments`' variance. Formed in float64 and rounded once to the
    accumulation dtype.

    Args:
        mu, logvar, z, variance, pattern: as in :func:`batch_moments`.

    Returns:
        ``(mean, cov)`` of shapes ``(dims,)`` and ``(dims, dims)``, in the accumulation dtype
        (float32 for half-precision inputs).

    Raises:
        ValueError: as :func:`batch_moments`.

    Example:
        >>> import torch
        >>> mu = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
        >>> batch_covariance(mu, torch.zeros(2, 2), variance="mixture")
        (tensor([2., 2.]), tensor([[2., 1.],
                [1., 2.]]))
    """
    mu_s, logvar_s, z_s = _moment_samples(mu, logvar, z, variance, pattern, upcast=False)
    mean, cov = _covariance(mu_s, logvar_s, z_s, variance)
    dtype = accumulation_dtype(mu_s)
    return mean.to(dtype), cov.to(dtype)


def _covariance(
    mu_s: Tensor, logvar_s: Tensor | None, z_s: Tensor | None, variance: str
) -> tuple[Tensor, Tensor]:
    """Eq. 17's mean and the estimator's full covariance (float64) from the ``(samples, dims)``
    matrices of :func:`_moment_samples`."""
    work = torch.float64
    mean = mu_s.to(work).mean(0)  # eq. 17
    deviation = (z_s if variance == "sample" else mu_s).to(work) - mean  # type: ignore[union-attr]
    cov = deviation.T @ deviation / deviation.shape[0]
    if variance == "mixture":
        assert logvar_s is not None
        cov = cov + torch.diag(logvar_s.to(work).exp().mean(0))
    return mean, cov


def _is_matrix(tensor: object, upcast: bool = True) -> bool:
    """A plain ``(samples, dims)`` tensor that :func:`as_samples` returns unchanged for
    ``pattern=None``: in an accumulation dtype, or any floating one without ``upcast``."""
    dtypes = ACCUMULATION_DTYPES if upcast else FLOATING_DTYPES
    return type(tensor) is Tensor and tensor.ndim == 2 and tensor.dtype in dtypes


def _matches(tensor: object, ref: Tensor) -> bool:
    """A plain tensor of ``ref``'s shape and dtype (which the checks of ``ref``'s shape and
    of floating dtypes pass)."""
    return type(tensor) is Tensor and tensor.shape == ref.shape and tensor.dtype == ref.dtype


def _moment_samples(
    mu: Tensor,
    logvar: Tensor | None,
    z: Tensor | None,
    variance: str,
    pattern: str | None,
    upcast: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Validate the inputs of :func:`batch_moments` and view them as ``(samples, dims)``
    matrices in the accumulation dtype: ``(mu, logvar or None, z or None)``, where ``logvar``
    is returned for ``"mixture"`` and ``z`` for ``"sample"``. Shared by the eager and fused
    paths so both raise the same errors. ``upcast=False`` keeps float16/bfloat16 as they are
    (the closed-form kernels of :mod:`mixelbo._fused` accumulate in float32 themselves)."""
    # the common case, checked in a few attribute reads: the checks below pass and return
    # the inputs as they are
    common = pattern is None and _is_matrix(mu, upcast) and mu.shape[0] >= 2
    common = common and variance in VARIANCES
    if common and (logvar is None or _matches(logvar, mu)) and (z is None or _matches(z, mu)):
        if variance == "sample" and z is not None:
            return mu, None, z
        if variance == "means":
            return mu, None, None
        if variance == "mixture" and logvar is not None:
            return mu, logvar, None
    check_option("variance", variance, VARIANCES)
    mu_s = as_samples("mu", mu, pattern, upcast)
    check_min_samples("mu", mu_s)
    if logvar is not None:  # validated even where the estimator ignores it
        check_floating("logvar", logvar)
        check_same_shape("logvar", logvar, "mu", mu)
    if variance == "sample":
        if z is None:
            raise ValueError('variance="sample" (eq. 18) needs the sampled latents z; got z=None')
        check_floating("z", z)
        check_same_shape("z", z, "mu", mu)
        return mu_s, None, as_samples("z", z, pattern, upcast)
    if variance == "means":
        return mu_s, None, None
    if logvar is None:
        raise ValueError('variance="mixture" needs logvar; got logvar=None')
    return mu_s, as_samples("logvar", logvar, pattern, upcast), None


def mixture_kl(
    mu: Tensor,
    logvar: Tensor | None = None,
    z: Tensor | None = None,
    *,
    variance: Variance = "sample",
    covariance: Covariance = "diagonal",
    reduction: DimReduction = "sum",
    pattern: str | None = None,
    fused: bool | None = None,
) -> Tensor:
    r"""KL_G of eq. 19: the batch-aggregate posterior against the prior :math:`\mathcal N(0, I)`.

    .. math::
        \mathrm{KL}_G = \frac12 \sum_{j=1}^d
            \left[\bar\sigma_j^2 + \bar\mu_j^2 - 1 - \log\bar\sigma_j^2\right]

    with :math:`\bar\mu, \bar\sigma^2` from :func:`batch_moments` (eqs. 17-18). Unlike the
    standard KL (eq. 10) it pulls the *mean* of the posterior means to zero, not each mean.
    The aggregate variance is clamped below at the dtype's smallest normal number, so a
    degenerate batch (all latents equal) gives a large finite loss instead of ``inf``.

    ``covariance="full"`` compares the Gaussian with the aggregate's full covariance
    :math:`S` (:func:`batch_covariance`) instead of its diagonal,

    .. math::
        \mathrm{KL}\big(\mathcal N(\bar\mu, S) \,\|\, \mathcal N(0, I)\big)
            = \frac12\left(\operatorname{tr} S + \bar\mu^\top\bar\mu - d - \log\det S\right),

    which also pulls the correlations between latent dims to zero (eq. 19 is its value for a
    diagonal :math:`S`, and by Hadamard's inequality never below it). It is formed in float64
    whatever the input dtype, through a Cholesky factorisation, with a closed-form gradient
    (:mod:`mixelbo._full_covariance`; for ``"mixture"`` with ``N <= dims`` through an
    ``(N - 1) x (N - 1)`` matrix instead). ``fused=False`` differentiates the reference
    expression with autograd instead; any other value selects the closed form (there are no
    fused kernels for it: BLAS and LAPACK do the work). Nothing is added to :math:`S`: where it
    is singular (the KL infinite), ``ValueError`` is raised instead of returning ``inf`` or
    ``NaN``. It costs :math:`O(Nd^2 + d^3)` against eq. 19's :math:`O(Nd)` (docs/benchmarks.md),
    and the check of the factorisation synchronises with the device (a graph break under
    ``torch.compile``).

    Args:
        mu, logvar, z, variance, pattern: as in :func:`batch_moments`.
        covariance: ``"diagonal"`` (eq. 19, the default) or ``"full"``.
        reduction: over latent dims, ``"sum"`` (eq. 19), ``"mean"`` or ``"none"``; with
            ``covariance="full"``, ``"sum"`` (the KL) or ``"mean"`` (the KL divided by the
            number of latent dims): the full KL has no per-dim terms, so ``"none"`` raises.
        fused: ``None`` (default): the closed-form gradient of :mod:`mixelbo._fused` with
            its fused Inductor kernels on CUDA and its eager kernels on CPU (nothing is
            compiled); ``MIXELBO_COMPILE=1`` selects the fused kernels everywhere and
            ``MIXELBO_COMPILE=0`` the eager ones. ``True``: the fused kernels unless
            ``MIXELBO_COMPILE=0``. ``False``: this eager reference expression, differentiated
            by autograd.

    Returns:
        A scalar, or the per-dimension KL of shape ``(dims,)`` for ``reduction="none"``.

    Shape:
        ``mu``, ``logvar``, ``z``: ``(N, ...)``, all the same; ``N >= 2`` samples (with
        ``covariance="full"`` and ``variance="sample"`` or ``"means"``, ``N > dims``).

    Raises:
        ValueError: as :func:`batch_moments`, and on an unknown ``covariance`` or
            ``reduction``; with ``covariance="full"``, on ``reduction="none"`` and where the
            covariance is singular: ``"sample"``/``"means"`` with ``N <= dims`` (rank at most
            ``N - 1``), or a failed float64 Cholesky factorisation (e.g. a dim with no spread).

    Example:
        >>> import torch
        >>> mu = torch.tensor([[-1.0], [1.0]])
        >>> mixture_kl(mu, torch.full((2, 1), -30.0), variance="mixture")  # N(0, 1): zero
        tensor(0.)
        >>> mu = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])  # perfectly correlated dims
        >>> mixture_kl(mu, torch.zeros(2, 2), variance="mixture")  # each marginal N(0, 2)
        tensor(0.3069)
        >>> mixture_kl(mu, torch.zeros(2, 2), variance="mixture", covariance="full")
        tensor(0.4507)
    """
    if reduction not in DIM_REDUCTIONS:
        check_option("reduction", reduction, DIM_REDUCTIONS)
    if covariance != "diagonal":
        return _full_covariance_kl(mu, logvar, z, variance, covariance, reduction, pattern, fused)
    # the closed form (eager mode) takes half precisions as they are, the reference float32
    upcast = fused is False or torch.compiler.is_compiling()
    mu_s, logvar_s, z_s = _moment_samples(mu, logvar, z, variance, pattern, upcast)
    closed_form = None
    if fused is not False:
        closed_form = _fused.mixture_kl_per_dim(mu_s, logvar_s, z_s, variance, fused)
    if closed_form is not None:
        per_dim, total = closed_form
        if reduction == "sum":
            return total
        return per_dim if reduction == "none" else total / per_dim.shape[0]
    mean, var = _moments(mu_s, logvar_s, z_s, variance)
    var = var.clamp_min(torch.finfo(var.dtype).tiny)
    kl_per_dim = 0.5 * (var + mean.square() - 1.0 - var.log())  # eq. 19
    return _reduce_dims(kl_per_dim, reduction)


def check_full_covariance_options(covariance: str, reduction: str) -> None:
    """Raise ``ValueError`` unless ``covariance`` is known and ``reduction`` fits it."""
    check_option("covariance", covariance, COVARIANCES)
    if covariance == "full" and reduction == "none":
        raise ValueError(
            "reduction='none' (per latent dim) does not apply to covariance='full': "
            "KL(N(m, S) || N(0, I)) with a full S does not decompose over dims; use "
            "reduction='sum' (the KL) or 'mean' (the KL / dims); got reduction='none'"
        )


def _full_covariance_kl(
    mu: Tensor,
    logvar: Tensor | None,
    z: Tensor | None,
    variance: str,
    covariance: str,
    reduction: str,
    pattern: str | None,
    fused: bool | None,
) -> Tensor:
    """:func:`mixture_kl` with ``covariance="full"``: the closed form, or (``fused=False``,
    and under ``torch.compile``) autograd through the reference expression."""
    check_full_covariance_options(covariance, reduction)
    mu_s, logvar_s, z_s = _moment_samples(mu, logvar, z, variance, pattern, upcast=False)
    samples, dims = mu_s.shape
    if fused is False or torch.compiler.is_compiling():
        _full_covariance.check_full_rank(variance, samples, dims)
        mean, cov = _covariance(mu_s, logvar_s, z_s, variance)
        chol = _full_covariance.cholesky_factor(cov, samples, variance)
        kl = _full_covariance.kl_from_cholesky(cov, chol, mean).to(accumulation_dtype(mu_s))
    else:
        kl = _full_covariance.mixture_kl_full(mu_s, logvar_s, z_s, variance)
    return kl if reduction == "sum" else kl / dims


def individual_variance_kl(
    logvar: Tensor,
    *,
    form: Literal["paper", "kl"] = "paper",
    reduction: ElementReduction = "sum",
    pattern: str | None = None,
    fused: bool | None = None,
) -> Tensor:
    r"""KL_I of eq. 20: penalises individual posteriors that shrink towards a Dirac delta.

    .. math::
        \mathrm{KL}_I = \sum_i \sum_j \left[\sigma_j^{(i)2} - 1 - \log\sigma_j^{(i)2}\right]

    Each element is :math:`c\,(\sigma^2 - 1 - \log\sigma^2)` with :math:`c = 1` for
    ``form="paper"`` (eq. 20 as printed) and :math:`c = 1/2` for ``form="kl"``, the true
    :math:`\mathrm{KL}(\mathcal N(\mu, \sigma^2) \| \mathcal N(\mu, 1))`. It does not depend on
    :math:`\mu`. This reference expression forms ``expm1(logvar) - logvar``; the fused kernels
    keep full float32 precision near :math:`\sigma = 1` (a Taylor branch), and the default CPU
    kernels form ``exp(logvar) - 1 - logvar`` as the plain expression does (``torch.expm1`` is
    about 17x slower than ``exp`` there), about 1e-7 absolute per element (docs/equations.md).

    Args:
        logvar: posterior log-variances, ``(N, ...)``.
        form: ``"paper"`` or ``"kl"`` (half of it).
        reduction: ``"sum"`` (eq. 20), ``"batchmean"`` (sum over dims, mean over samples: the
            authors' public code), ``"mean"`` (over all elements) or ``"none"``.
        pattern: einops pattern mapping ``logvar`` to ``(samples, dims)``; decides what
            ``"batchmean"`` divides by and the shape of ``"none"``.
        fused: for the scalar reductions, as in :func:`mixture_kl`: ``None`` (default): the
            closed-form gradient with fused kernels on CUDA and eager ones on CPU; ``True``:
            the fused kernels unless ``MIXELBO_COMPILE=0``; ``False``: this eager reference
            expression. ``"none"`` always evaluates the reference expression.

    Returns:
        A scalar, or the ``(samples, dims)`` elements for ``reduction="none"``.

    Raises:
        ValueError: on an unknown ``form`` or ``reduction``, or a non-floating ``logvar``.

    Example:
        >>> import torch
        >>> individual_variance_kl(torch.zeros(4, 3))
        tensor(0.)
    """
    if form not in ("paper", "kl"):
        check_option("form", form, ("paper", "kl"))
    if reduction not in ELEMENT_REDUCTIONS:
        check_option("reduction", reduction, ELEMENT_REDUCTIONS)
    upcast = reduction == "none" or fused is False or torch.compiler.is_compiling()
    plain = pattern is None and _is_matrix(logvar, upcast)  # as as_samples would return it
    logvar_s = logvar if plain else as_samples("logvar", logvar, pattern, upcast)
    scale = 0.5 if form == "kl" else 1.0
    total = None
    if reduction != "none" and fused is not False:
        total = _fused.individual_variance_kl_sum(logvar_s, fused)
    if total is not None:
        if reduction == "sum":
            return total if scale == 1.0 else total * scale
        divisor = logvar_s.shape[0] if reduction == "batchmean" else logvar_s.numel()
        return total * (scale / divisor)
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
    check_floating("mu", mu)
    check_floating("logvar", logvar)
    check_same_shape("logvar", logvar, "mu", mu)
    mu_s = as_samples("mu", mu, pattern)
    logvar_s = as_samples("logvar", logvar, pattern)
    elements = 0.5 * (torch.expm1(logvar_s) + mu_s.square() - logvar_s)  # eq. 10
    return _reduce_elements(elements, reduction)


def kl_per_dim(mu: Tensor, logvar: Tensor, *, pattern: str | None = None) -> Tensor:
    r"""Diagnostic: the standard KL (eq. 10) of each latent dim, averaged over samples.

    Dimensions whose KL is near zero carry no information about the input (collapsed to the
    prior).

    Args:
        mu: posterior means, ``(N, ...)``.
        logvar: posterior log-variances, shape of ``mu``.
        pattern: einops pattern mapping the inputs to ``(samples, dims)``.

    Returns:
        The mean KL per latent dim, ``(dims,)``, in the accumulation dtype.

    Raises:
        ValueError: as :func:`gaussian_kl` (shape mismatch, non-floating dtypes, bad pattern).

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
    (0.01 in the original). Pass the means of a whole evaluation set.

    Args:
        mu: posterior means over an evaluation set, ``(N, ...)``, ``N >= 2``.
        threshold: activity above which a unit counts as active.
        pattern: einops pattern mapping ``mu`` to ``(samples, dims)``.

    Returns:
        The number of active units, an int64 scalar.

    Raises:
        ValueError: on a non-floating ``mu``, a bad pattern or fewer than 2 samples.

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

    Args:
        logvar: posterior log-variances, ``(N, ...)``.
        pattern: einops pattern mapping ``logvar`` to ``(samples, dims)``.

    Returns:
        A scalar in the accumulation dtype.

    Raises:
        ValueError: on a non-floating ``logvar`` or a bad pattern.

    Example:
        >>> import torch
        >>> mean_posterior_sigma(torch.zeros(3, 2))
        tensor(1.)
    """
    return as_samples("logvar", logvar, pattern).mul(0.5).exp().mean()


def _logit_maps(name: str, logits: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """One logit map or one per scale, each in the accumulation dtype (at least float32)."""
    maps = [logits] if isinstance(logits, Tensor) else list(logits)
    if not maps:
        raise ValueError(f"{name} must be a tensor or a non-empty sequence of tensors; got []")
    for scale, logit_map in enumerate(maps):
        check_floating(name if len(maps) == 1 else f"{name}[{scale}]", logit_map)
    return [m if m.dtype == torch.float64 else m.float() for m in maps]


def _mean_over_scales(losses: list[Tensor]) -> Tensor:
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def adversarial_generator_loss(
    fake_logits: Tensor | Sequence[Tensor], criterion: Criterion = "bce"
) -> Tensor:
    r"""The generator's adversarial term of eq. 21, averaged over the patch-logit map.

    - ``"bce"``: :math:`H[\mathbf 1, \sigma(D(\hat x))]`
      :math:`= \mathrm{mean}\,\mathrm{softplus}(-D(\hat x))` (eq. 21), evaluated from logits;
    - ``"hinge"``: :math:`-\mathrm{mean}\, D(\hat x)` (Lim and Ye 2017; Miyato et al. 2018);
    - ``"lsgan"``: :math:`\mathrm{mean}\,(D(\hat x) - 1)^2` (Mao et al. 2017).

    ``fake_logits`` may be a list of maps, one per scale of a
    :class:`~mixelbo.MultiScaleDiscriminator`; the loss is then the mean over scales.

    Args:
        fake_logits: the discriminator's logits on generated images, any shape, or a list of
            them (one per scale).
        criterion: ``"bce"``, ``"hinge"`` or ``"lsgan"``.

    Returns:
        A scalar, float32 for half-precision logits (float64 stays float64).

    Raises:
        ValueError: on an unknown ``criterion``, non-floating logits or an empty list.

    Example:
        >>> import torch
        >>> adversarial_generator_loss(torch.zeros(1, 1, 2, 2))  # log 2
        tensor(0.6931)
    """
    check_option("criterion", criterion, CRITERIA)
    losses = []
    for logits in _logit_maps("fake_logits", fake_logits):
        if criterion == "bce":
            losses.append(torch_f.softplus(-logits).mean())  # -log sigmoid(l) = softplus(-l)
        elif criterion == "hinge":
            losses.append(-logits.mean())
        else:
            losses.append((logits - 1.0).square().mean())
    return _mean_over_scales(losses)


def adversarial_discriminator_loss(
    real_logits: Tensor | Sequence[Tensor],
    fake_logits: Tensor | Sequence[Tensor],
    criterion: Criterion = "bce",
    *,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""The discriminator's loss of eq. 23, each part averaged over its patch-logit map.

    - ``"bce"``: :math:`H[\mathbf 1, \sigma(D(x))] + H[\mathbf 0, \sigma(D(\hat x))]` (eq. 23)
      :math:`= \mathrm{mean}\,\mathrm{softplus}(-D(x))`
      :math:`+ \mathrm{mean}\,\mathrm{softplus}(D(\hat x))`;
    - ``"hinge"``: :math:`\mathrm{mean}\,\mathrm{relu}(1 - D(x))`
      :math:`+ \mathrm{mean}\,\mathrm{relu}(1 + D(\hat x))`;
    - ``"lsgan"``: :math:`\mathrm{mean}\,(D(x) - 1)^2 + \mathrm{mean}\,D(\hat x)^2`.

    One-sided label smoothing (Salimans et al. 2016, sec. 3.4) replaces the target of the
    *real* images by :math:`t = 1 - s` and leaves the fake target at 0, so the discriminator
    is not rewarded for ever more confident logits on real data (which would send vanishing
    or exploding gradients to the generator); the generator's loss is unchanged. For
    ``"bce"`` the real part becomes
    :math:`\mathrm{mean}[t\,\mathrm{softplus}(-D(x)) + (1 - t)\,\mathrm{softplus}(D(x))]`,
    for ``"lsgan"`` :math:`\mathrm{mean}\,(D(x) - t)^2`. The hinge loss has no target to
    smooth (its margin already stops rewarding logits beyond 1), so ``"hinge"`` with
    ``label_smoothing > 0`` raises.

    Lists of maps (one per scale) give the mean over scales of the per-scale losses.

    Args:
        real_logits: the discriminator's logits on real images, or a list (one per scale).
        fake_logits: its logits on generated images, the same number of scales.
        criterion: ``"bce"``, ``"hinge"`` or ``"lsgan"``.
        label_smoothing: ``s`` in ``[0, 1)``; the real target becomes ``1 - s``.

    Returns:
        A scalar, float32 for half-precision logits (float64 stays float64).

    Raises:
        ValueError: on an unknown ``criterion``, ``label_smoothing`` outside ``[0, 1)``, label
            smoothing with ``"hinge"``, non-floating logits, or different numbers of scales.

    Example:
        >>> import torch
        >>> adversarial_discriminator_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
        tensor(1.3863)
    """
    check_option("criterion", criterion, CRITERIA)
    check_label_smoothing(label_smoothing, criterion)
    real_maps = _logit_maps("real_logits", real_logits)
    fake_maps = _logit_maps("fake_logits", fake_logits)
    if len(real_maps) != len(fake_maps):
        raise ValueError(
            "real_logits and fake_logits must have the same number of scales; got "
            f"{len(real_maps)} and {len(fake_maps)}"
        )
    real_target = 1.0 - label_smoothing
    losses = []
    for real, fake in zip(real_maps, fake_maps, strict=True):
        if criterion == "bce":
            real_part = torch_f.softplus(-real)
            if label_smoothing > 0:  # H[t, sigmoid(l)] = t softplus(-l) + (1 - t) softplus(l)
                real_part = real_target * real_part + label_smoothing * torch_f.softplus(real)
            losses.append(real_part.mean() + torch_f.softplus(fake).mean())
        elif criterion == "hinge":
            losses.append(torch_f.relu(1.0 - real).mean() + torch_f.relu(1.0 + fake).mean())
        else:
            losses.append((real - real_target).square().mean() + fake.square().mean())
    return _mean_over_scales(losses)


def check_label_smoothing(label_smoothing: float, criterion: str) -> None:
    """Raise ``ValueError`` unless ``label_smoothing`` is in ``[0, 1)`` and fits ``criterion``."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing!r}")
    if label_smoothing > 0 and criterion == "hinge":
        raise ValueError(
            "label_smoothing does not apply to the hinge loss (it has no target, only a "
            f"margin); got label_smoothing={label_smoothing!r} with criterion='hinge'"
        )


def check_adaptive_weight_options(delta: float, max_weight: float, fallback: float) -> None:
    """Raise ``ValueError`` unless ``delta >= 0``, ``max_weight > 0``, ``0 <= fallback <= max``."""
    if not delta >= 0:
        raise ValueError(f"delta must be non-negative; got {delta!r}")
    if not max_weight > 0:
        raise ValueError(f"max_weight must be positive; got {max_weight!r}")
    if not 0 <= fallback <= max_weight:
        raise ValueError(f"fallback must be in [0, max_weight={max_weight}]; got {fallback!r}")


def _gradient_or_zeros(loss: Tensor, weight: Tensor) -> Tensor:
    """d loss / d weight, keeping the graph; zeros when ``loss`` does not depend on ``weight``."""
    if not loss.requires_grad:
        return torch.zeros_like(weight)
    (gradient,) = torch.autograd.grad(loss, weight, retain_graph=True, allow_unused=True)
    return torch.zeros_like(weight) if gradient is None else gradient


def adaptive_adversarial_weight(
    rec_loss: Tensor,
    adv_loss: Tensor,
    last_layer: Tensor,
    *,
    delta: float = 1e-4,
    max_weight: float = 1e4,
    fallback: float = 0.0,
) -> Tensor:
    r"""Adaptive weight of the adversarial term (Esser, Rombach and Ommer 2021).

    .. math::
        \lambda = \frac{\lVert \nabla_{G_L} \mathcal L_{rec} \rVert}
                        {\lVert \nabla_{G_L} \mathcal L_{adv} \rVert + \delta}

    where :math:`G_L` is the decoder's last layer: the adversarial gradient there is
    rescaled to the size of the reconstruction gradient, so neither term drowns the other.
    :math:`\lambda` is clamped to ``[0, max_weight]`` and detached (no gradient flows
    through it), as in taming-transformers' ``calculate_adaptive_weight``.

    Safer than that reference in three ways:

    - the two gradients are upcast to float32 (float64 stays) *before* the norms, so a
      float16/bfloat16 last layer cannot overflow the sum of squares to ``inf`` (``inf / inf``
      is the ``NaN`` that ``clamp`` lets through);
    - a non-finite ratio (``NaN``/``inf`` gradients, or ``0 / 0`` with ``delta=0``) gives
      ``fallback`` instead of ``NaN``;
    - outside autograd (``torch.no_grad()``, e.g. validation) or when ``rec_loss`` has no
      graph there is no gradient to measure, and ``fallback`` is returned instead of raising.

    A loss that does not depend on ``last_layer`` has a zero gradient there; with
    ``delta > 0`` a zero adversarial gradient gives ``min(||grad rec|| / delta, max_weight)``.

    Args:
        rec_loss: the non-adversarial loss (its gradient at ``last_layer``), a scalar.
        adv_loss: the generator's adversarial loss, a scalar.
        last_layer: the weight of the decoder's last layer (requires grad).
        delta: added to the denominator (1e-4 in taming-transformers).
        max_weight: upper clamp (1e4 in taming-transformers).
        fallback: the weight returned when the ratio is not finite or cannot be computed.

    Returns:
        A detached scalar in float32 (float64 if ``last_layer`` is float64).

    Raises:
        ValueError: if a loss is not a scalar, ``last_layer`` does not require grad, or
            ``delta < 0``, ``max_weight <= 0`` or ``fallback`` is outside ``[0, max_weight]``.

    Example:
        >>> import torch
        >>> w = torch.ones(3, requires_grad=True)
        >>> adaptive_adversarial_weight((4 * w).sum(), w.sum(), w, delta=0.0)  # 4 sqrt3 / sqrt3
        tensor(4.)
    """
    for name, loss in (("rec_loss", rec_loss), ("adv_loss", adv_loss)):
        check_floating(name, loss)
        if loss.numel() != 1:
            raise ValueError(f"{name} must be a scalar; got shape {tuple(loss.shape)}")
    check_floating("last_layer", last_layer)
    if not last_layer.requires_grad:
        raise ValueError(
            "last_layer must require grad (pass the decoder's last weight, e.g. "
            "decoder.final.weight); got a tensor with requires_grad=False"
        )
    check_adaptive_weight_options(delta, max_weight, fallback)
    dtype = torch.float64 if last_layer.dtype == torch.float64 else torch.float32
    if not (torch.is_grad_enabled() and rec_loss.requires_grad):
        return torch.tensor(fallback, dtype=dtype, device=last_layer.device)
    rec_gradient = _gradient_or_zeros(rec_loss, last_layer).detach().to(dtype)
    adv_gradient = _gradient_or_zeros(adv_loss, last_layer).detach().to(dtype)
    rec_norm = torch.linalg.vector_norm(rec_gradient)
    adv_norm = torch.linalg.vector_norm(adv_gradient)
    ratio = rec_norm / (adv_norm + delta)
    return torch.where(ratio.isfinite(), ratio.clamp(0.0, max_weight), fallback)


def r1_penalty(
    real_logits: Tensor | Sequence[Tensor], real: Tensor, *, gamma: float = 1.0
) -> Tensor:
    r"""R1 gradient penalty on real data (Mescheder, Geiger and Nowozin 2018).

    .. math:: R_1 = \frac{\gamma}{2}\, \mathbb E_{x \sim p_{data}}
                    \lVert \nabla_x D(x) \rVert^2

    It penalises the discriminator's slope on the data manifold, which makes GAN training
    locally convergent where the unregularised game oscillates. For a patch map,
    :math:`D(x)` is the *sum* of the image's logits (over every patch and, for a list of
    maps, every scale), so a 1x1 map gives Mescheder's penalty exactly; the expectation is
    the mean over the batch of the per-image squared norms. The logits are cast to float32
    before the sum and the gradient is upcast before squaring, so the penalty is accumulated
    in float32 under autocast; ``create_graph=True`` makes it differentiable with respect to
    the discriminator's parameters.

    Args:
        real_logits: the discriminator's logits for ``real`` (a map or one map per scale).
        real: the real batch, ``(B, ...)``, which must require grad and be the tensor the
            logits were computed from (``real = real.detach().requires_grad_()`` before the
            discriminator call).
        gamma: the weight :math:`\gamma`.

    Returns:
        A scalar in float32 (float64 for float64 inputs), differentiable w.r.t. the
        discriminator's parameters.

    Raises:
        ValueError: if ``real`` does not require grad, the logits do not depend on it, or
            ``gamma < 0``.

    Example:
        >>> import torch
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> r1_penalty((2 * x).sum(1), x, gamma=1.0)  # gradient 2 per entry: 1/2 * 12
        tensor(6.)
    """
    check_floating("real", real)
    if not gamma >= 0:
        raise ValueError(f"gamma must be non-negative; got {gamma!r}")
    if not real.requires_grad:
        raise ValueError(
            "real must require grad: call real = real.detach().requires_grad_() before the "
            "discriminator, then pass the same tensor"
        )
    maps = _logit_maps("real_logits", real_logits)
    score = torch.stack([logit_map.sum() for logit_map in maps]).sum()
    (gradient,) = torch.autograd.grad(score, real, create_graph=True, allow_unused=True)
    if gradient is None:
        raise ValueError("real_logits do not depend on real; pass the tensor D was called on")
    squared_norm = gradient.to(accumulation_dtype(real)).square().flatten(1).sum(1)
    return 0.5 * gamma * squared_norm.mean()
