"""mixelbo: the loss terms of "How to train your VAE" (Rivera, ICIP 2024) for PyTorch.

Drop-in modules for the VAE code you already have:

- :class:`MixtureKL`: KL_G of the batch-aggregate posterior against N(0, I) (eqs. 17-19);
- :class:`IndividualVarianceKL`: KL_I, keeps posteriors from collapsing to Dirac deltas (eq. 20);
- :class:`GaussianKL`: the standard VAE KL (eq. 10), for baselines;
- :class:`PatchDiscriminator` and :class:`PatchGANLoss`: the adversarial terms (eqs. 21, 23);
- :class:`RegularizedELBO`: eq. 22 as one module;
- :class:`GaussianSampler` and :class:`GaussianMixtureSampler`: ex-post samplers fitted to
  encoded training data, to sample latents from instead of N(0, I) (Ghosh et al. 2020).

The math lives in :mod:`mixelbo.functional`.
"""

from mixelbo import functional
from mixelbo.adaptive_weight import AdaptiveAdversarialWeight
from mixelbo.gaussian_kl import GaussianKL
from mixelbo.gaussian_mixture_sampler import GaussianMixtureSampler
from mixelbo.gaussian_sampler import GaussianSampler
from mixelbo.gradient_penalty import R1Penalty
from mixelbo.individual_variance_kl import IndividualVarianceKL
from mixelbo.mixture_kl import MixtureKL
from mixelbo.multiscale_discriminator import MultiScaleDiscriminator
from mixelbo.patch_discriminator import PatchDiscriminator
from mixelbo.patchgan_loss import DiscriminatorTerms, PatchGANLoss
from mixelbo.regularized_elbo import ELBOTerms, RegularizedELBO

__version__ = "0.1.0"

__all__ = [
    "AdaptiveAdversarialWeight",
    "DiscriminatorTerms",
    "ELBOTerms",
    "GaussianKL",
    "GaussianMixtureSampler",
    "GaussianSampler",
    "IndividualVarianceKL",
    "MixtureKL",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "PatchGANLoss",
    "R1Penalty",
    "RegularizedELBO",
    "__version__",
    "functional",
]
