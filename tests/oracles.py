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
