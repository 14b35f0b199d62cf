"""Independent float64 NumPy re-derivations of the paper's equations (Rivera, ICIP 2024).

Written from the paper's text, not from ``mixelbo.functional``: every function takes
``(samples, dims)`` float64 arrays and spells the equation out with NumPy. Where the library
uses a numerically careful form (``expm1``, centred deviations), the oracle deliberately uses
the plain textbook form, so the two share no code path.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

Array = NDArray[np.float64]


def f64(tensor: torch.Tensor) -> Array:
    """A tensor as a float64 NumPy array (after whatever rounding its dtype already did)."""
    return tensor.detach().to(torch.float64).cpu().numpy()


def eq17_mean(mu: Array) -> Array:
    """Eq. 17: mu_bar_j = 1/N sum_i mu_j^(i)."""
    n = mu.shape[0]
    return np.sum(mu, axis=0) / n


def eq18_variance(z: Array, mu: Array) -> Array:
    """Eq. 18: sigma_bar_j^2 = 1/N sum_i (z_j^(i) - mu_bar_j)^2, centred on eq. 17's mean."""
    n = z.shape[0]
    return np.sum((z - eq17_mean(mu)[None, :]) ** 2, axis=0) / n


def means_variance(mu: Array) -> Array:
    """The public code's estimator: population variance of the posterior means."""
    return np.var(mu, axis=0)  # numpy's default ddof=0 is the 1/N population variance


def mixture_variance(mu: Array, logvar: Array) -> Array:
    """Variance of the equal-weight mixture (eq. 14) as second moment minus squared mean.

    E[z^2] of a mixture is the average of the components' second moments sigma^2 + mu^2.
    """
    second_moment = np.mean(np.exp(logvar) + mu**2, axis=0)
    return second_moment - np.mean(mu, axis=0) ** 2


def eq19_kl_g(mean: Array, var: Array) -> Array:
    """Eq. 19 per latent dim: 1/2 [var + mean^2 - 1 - log var]."""
    return 0.5 * (var + mean**2 - 1.0 - np.log(var))


def eq20_elements(logvar: Array) -> Array:
    """Eq. 20 per element as printed: sigma^2 - 1 - log sigma^2 (no factor 1/2)."""
    sigma2 = np.exp(logvar)
    return sigma2 - 1.0 - np.log(sigma2)


def eq10_elements(mu: Array, logvar: Array) -> Array:
    """Eq. 10 per element: 1/2 [sigma^2 + mu^2 - 1 - log sigma^2]."""
    sigma2 = np.exp(logvar)
    return 0.5 * (sigma2 + mu**2 - 1.0 - np.log(sigma2))


def reduce_elements(elements: Array, reduction: str) -> Array | float:
    """The element reductions described in the issue: sum, batchmean, mean, none."""
    if reduction == "sum":
        return float(np.sum(elements))
    if reduction == "batchmean":
        return float(np.sum(elements) / elements.shape[0])
    if reduction == "mean":
        return float(np.mean(elements))
    return elements


def reduce_dims(per_dim: Array, reduction: str) -> Array | float:
    """The latent-dim reductions of KL_G: sum (eq. 19), mean, none."""
    if reduction == "sum":
        return float(np.sum(per_dim))
    if reduction == "mean":
        return float(np.mean(per_dim))
    return per_dim


def torch_normal_kl(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)) elementwise via torch.distributions."""
    from torch.distributions import Normal, kl_divergence

    return kl_divergence(
        Normal(mean, var.sqrt()), Normal(torch.zeros_like(mean), torch.ones_like(mean))
    )


# ---------------------------------------------------------------- the full-covariance KL_G


def full_covariance(mu: Array, logvar: Array, z: Array, variance: str) -> tuple[Array, Array]:
    """Eq. 17's mean and the estimator's full covariance, in the textbook uncentred form
    (second moment minus the outer product of the means), 1/N.

    ``"sample"``: E[(z - m)(z - m)^T] with m eq. 17's mean of ``mu``; ``"means"``: Cov(mu);
    ``"mixture"``: E[mu mu^T] + diag(E[sigma^2]) - m m^T, the covariance of the mixture.
    """
    n = mu.shape[0]
    m = np.sum(mu, axis=0) / n
    if variance == "sample":
        zbar = np.sum(z, axis=0) / n
        second = z.T @ z / n
        return m, second - np.outer(m, zbar) - np.outer(zbar, m) + np.outer(m, m)
    cov = mu.T @ mu / n - np.outer(m, m)
    if variance == "mixture":
        cov = cov + np.diag(np.mean(np.exp(logvar), axis=0))
    return m, cov


def full_kl(mean: Array, cov: Array) -> float:
    """KL(N(mean, cov) || N(0, I)) = 1/2 (tr cov + mean.mean - d - log det cov), via slogdet."""
    sign, log_det = np.linalg.slogdet(cov)
    assert sign > 0, "the oracle's covariance is not positive definite"
    return float(0.5 * (np.trace(cov) + mean @ mean - mean.shape[0] - log_det))


def torch_full_kl(
    mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, variance: str
) -> torch.Tensor:
    """The same KL, differentiable, through ``torch.distributions``: the covariance in the
    uncentred form above (torch float64), then ``kl_divergence(MultivariateNormal(m, S),
    MultivariateNormal(0, I))``. The gradient oracle."""
    from torch.distributions import MultivariateNormal, kl_divergence

    n, d = mu.shape
    m = mu.sum(0) / n
    if variance == "sample":
        zbar = z.sum(0) / n
        cov = z.T @ z / n - torch.outer(m, zbar) - torch.outer(zbar, m) + torch.outer(m, m)
    else:
        cov = mu.T @ mu / n - torch.outer(m, m)
        if variance == "mixture":
            cov = cov + torch.diag(logvar.exp().mean(0))
    cov = 0.5 * (cov + cov.T)  # exactly symmetric, as MultivariateNormal's check requires
    eye = torch.eye(d, dtype=mu.dtype)
    return kl_divergence(MultivariateNormal(m, cov), MultivariateNormal(torch.zeros_like(m), eye))


def exact_mixture_full_kl(mu: torch.Tensor, logvar: torch.Tensor, digits: int = 50) -> float:
    """The ``"mixture"`` full-covariance KL in ``digits``-digit arithmetic (mpmath), from the
    definition: S = (1/N) sum_i (mu_i - m)(mu_i - m)^T + diag(mean sigma^2), det by LU. For
    small, extremely ill-conditioned cases where every float64 formula loses digits."""
    import mpmath

    with mpmath.workdps(digits):
        rows = mpmath.matrix(f64(mu).tolist())
        variances = mpmath.matrix(f64(logvar).tolist())
        n, d = rows.rows, rows.cols
        m = [mpmath.fsum(rows[i, j] for i in range(n)) / n for j in range(d)]
        cov = mpmath.matrix(d, d)
        for j in range(d):
            for k in range(d):
                spread = mpmath.fsum((rows[i, j] - m[j]) * (rows[i, k] - m[k]) for i in range(n))
                cov[j, k] = spread / n
            cov[j, j] += mpmath.fsum(mpmath.exp(variances[i, j]) for i in range(n)) / n
        trace = mpmath.fsum(cov[j, j] for j in range(d))
        kl = (trace + mpmath.fsum(x * x for x in m) - d - mpmath.log(mpmath.det(cov))) / 2
        return float(kl)
