"""Why the paper's eq. 22 collapses on a small model, measured step by step (docs/collapse.md).

Trains the cpu-32 reference VAE on the bundled MNIST digits (``--data mnist``: 4000 train /
1000 test) without the GAN term, once per set-up, with the same seed, data order, optimizer
(Adam, lr 1e-3, betas (0.5, 0.999)) and batch size (32). At every step it records, on the
training batch:

- mean posterior sigma and var(mu) (the batch variance of the means, averaged over dims);
- KL_G (eq. 19, the set-up's estimator) and KL_I (eq. 20, per image: sum over dims, mean over
  the batch, so it reads the same whatever the set-up's reduction);
- the norm of each weighted loss term's gradient with respect to mu and to log sigma^2.

At the end it reports active units (Burda et al. 2016, threshold 0.01) and L1 on the test split.
Set-ups (``--setups``, names below, each optionally ``@4x4``: the cpu-32 model with a 4x4
bottleneck, as it was before issue 10, 64 features into the heads instead of 256): ``paper``
is ``RegularizedELBO.paper(beta4=0)``; ``paper-kl-i-per-image`` changes only KL_I's reduction
from a sum over the batch (eq. 20 as printed) to a mean over the batch; ``paper-no-kl-i``
drops KL_I; ``vae`` is the trainer's standard-VAE baseline (eq. 10 KL + 5000 MAE);
``recommended`` is ``RegularizedELBO()``.

Run: ``python docs/scripts/collapse_mechanism.py --steps 400`` (writes
docs/img/collapse-mechanism.png and a JSON of every curve next to it; 1 to 2 minutes per set-up
on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from mixelbo import RegularizedELBO
from mixelbo import functional as F
from mixelbo_reference.config import MODEL_CONFIGS
from mixelbo_reference.data import fixed_batch
from mixelbo_reference.mnist import SPLIT_DESCRIPTION, mnist_datasets
from mixelbo_reference.models import build_vae
from mixelbo_reference.objectives import StandardELBO

Terms = dict[str, tuple[float, Tensor]]  # name -> (weight, unweighted term)


def _elbo_terms(elbo: RegularizedELBO) -> Callable[..., Terms]:
    def terms(x: Tensor, x_hat: Tensor, mu: Tensor, logvar: Tensor, z: Tensor) -> Terms:
        out = elbo(x, x_hat, mu, logvar, z)
        return {
            "kl_g": (elbo.beta1, out.kl_g),
            "kl_i": (elbo.beta2, out.kl_i),
            "reconstruction": (elbo.beta3, out.reconstruction),
        }

    return terms


def _vae_terms(x: Tensor, x_hat: Tensor, mu: Tensor, logvar: Tensor, z: Tensor) -> Terms:
    vae = StandardELBO(beta=1.0, adversarial=None)
    out = vae(x, x_hat, mu, logvar, z)
    return {"kl": (vae.beta, out.kl), "reconstruction": (vae.beta3, out.reconstruction)}


SETUPS: dict[str, Callable[[], Callable[..., Terms]]] = {
    "paper": lambda: _elbo_terms(RegularizedELBO.paper(beta4=0.0)),
    "paper-kl-i-per-image": lambda: _elbo_terms(
        RegularizedELBO.paper(beta4=0.0, kl_i_reduction="batchmean")
    ),
    "paper-no-kl-i": lambda: _elbo_terms(RegularizedELBO.paper(beta4=0.0, beta2=0.0)),
    "vae": lambda: _vae_terms,
    "recommended": lambda: _elbo_terms(RegularizedELBO(beta4=0.0)),
}


ARCHITECTURES = {
    "": MODEL_CONFIGS["cpu-32"],  # 8x8 bottleneck: 256 features into the heads
    "4x4": dataclasses.replace(MODEL_CONFIGS["cpu-32"], num_stages=3),  # cpu-32 before issue 10
}


def run_setup(spec: str, steps: int, seed: int, batch_size: int = 32) -> dict[str, object]:
    """Train one set-up (``OBJECTIVE`` or ``OBJECTIVE@4x4``) and return its per-step curves
    and final test metrics."""
    name, _, architecture = spec.partition("@")
    torch.manual_seed(seed)
    train_set, test_set = mnist_datasets(32)
    vae = build_vae(ARCHITECTURES[architecture])
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, betas=(0.5, 0.999))
    objective = SETUPS[name]()
    images = fixed_batch(train_set, len(train_set))
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))
    curves: dict[str, list[float]] = {}
    start = time.perf_counter()
    for step in range(steps):
        first = (step * batch_size) % (len(order) - batch_size + 1)
        x = images[order[first : first + batch_size]]
        x_hat, mu, logvar, z = vae(x)
        terms = objective(x, x_hat, mu, logvar, z)
        record = {
            "mean_sigma": F.mean_posterior_sigma(logvar).item(),
            "var_mu": mu.var(0, unbiased=False).mean().item(),
            "kl_g": F.mixture_kl(mu, logvar, z, variance="sample").item(),
            "kl_i_per_image": F.individual_variance_kl(logvar, reduction="batchmean").item(),
        }
        total = sum(weight * term for weight, term in terms.values())
        for term_name, (weight, term) in terms.items():
            if weight == 0 or not term.requires_grad:
                grads = (torch.zeros(()), torch.zeros(()))
            else:
                grads = torch.autograd.grad(
                    weight * term, (mu, logvar), retain_graph=True, allow_unused=True
                )
            for wrt, grad in zip(("mu", "logvar"), grads, strict=True):
                value = 0.0 if grad is None else grad.norm().item()
                record[f"grad_{term_name}_{wrt}"] = value
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[union-attr]
        optimizer.step()
        for key, value in record.items():
            curves.setdefault(key, []).append(value)
    seconds = time.perf_counter() - start
    vae.eval()
    with torch.no_grad():
        x = fixed_batch(test_set, len(test_set))
        mu, logvar = vae.encode(x)
        l1 = (vae.decode(mu) - x).abs().mean().item()
    return {
        "setup": spec,
        "curves": curves,
        "test_active_units": int(F.active_units(mu).item()),
        "test_mean_sigma": F.mean_posterior_sigma(logvar).item(),
        "test_var_mu": mu.var(0, unbiased=False).mean().item(),
        "test_l1": l1,
        "seconds": seconds,
    }


def plot(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("mean_sigma", "mean posterior sigma", False),
        ("var_mu", "var(mu) over the batch", True),
        ("kl_g", "KL_G (eq. 19, sample variance)", True),
        ("kl_i_per_image", "KL_I per image (eq. 20)", True),
        ("grad_mu", "|grad wrt mu| of each weighted term", True),
        ("grad_logvar", "|grad wrt log sigma^2| of each weighted term", True),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"reconstruction": "-", "kl_i": "--", "kl_g": ":", "kl": "-."}
    for axis, (key, title, log) in zip(axes.flat, panels, strict=True):
        for color, result in zip(colors, results, strict=False):
            curves: dict[str, list[float]] = result["curves"]  # type: ignore[assignment]
            if key.startswith("grad_"):
                wrt = key.removeprefix("grad_")
                for term, style in styles.items():
                    series = curves.get(f"grad_{term}_{wrt}")
                    if series is not None and max(series) > 0:
                        label = f"{result['setup']}: {term}"
                        axis.plot(series, style, color=color, label=label, lw=1)
            else:
                axis.plot(curves[key], color=color, label=str(result["setup"]), lw=1.2)
        axis.set_title(title)
        axis.set_xlabel("step")
        if log:
            axis.set_yscale("log")
        axis.legend(fontsize=6)
    fig.suptitle(
        "cpu-32 VAE on MNIST, no GAN, Adam 1e-3, batch 32, seed 0: the collapse, step by step"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--setups",
        nargs="+",
        default=["paper@4x4", "paper-kl-i-per-image@4x4", "paper", "recommended", "vae"],
    )
    parser.add_argument("--out", type=Path, default=Path("docs/img/collapse-mechanism.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for name in args.setups:
        result = run_setup(name, args.steps, args.seed)
        results.append(result)
        print(
            f"{name:>22}: test active units {result['test_active_units']}/32, mean sigma "
            f"{result['test_mean_sigma']:.3f}, var(mu) {result['test_var_mu']:.4f}, "
            f"L1 {result['test_l1']:.4f} ({result['seconds']:.0f} s)",
            flush=True,
        )
    plot(results, args.out)
    meta = {"machine": platform.processor() or platform.machine(), "data": SPLIT_DESCRIPTION}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}))


if __name__ == "__main__":
    main()
