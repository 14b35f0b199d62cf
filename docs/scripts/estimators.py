"""Measure the bias and spread of the three aggregate-variance estimators of MixtureKL.

Monte Carlo over random mixtures. Each trial draws a batch of ``b`` individual posteriors
N(mu_i, sigma_i^2) independently from a population whose aggregate posterior (the mixture over
the whole data set, eqs. 14-16) has mean ``m`` and variance ``V = Vm + Vs``:

    mu_i ~ N(m, Vm),   log sigma_i^2 ~ N(log Vs - s^2 / 2, s^2)   (so E[sigma_i^2] = Vs),

and one reparameterised sample z_i = mu_i + sigma_i * eps_i. Every trial is one column of a
``(b, trials)`` matrix, so ``mixelbo.functional`` evaluates all trials at once (float64).
For each estimator (``sample``: eq. 18, ``means``: the authors' code, ``mixture``: exact
mixture variance) it reports the relative bias E[v]/V - 1 and relative spread std(v)/V, and
the bias and spread of the per-dimension KL_G (eq. 19) against the KL of the true aggregate
N(m, V). Closed forms for the variance bias, printed beside the measurement as a check:

    E[v_means] = (b - 1)/b Vm,    E[v_mixture] = E[v_sample] = Vs + (b - 1)/b Vm.

Run: ``python docs/scripts/estimators.py`` (writes docs/img/estimators.png and prints the
Markdown tables of docs/estimators.md).
"""

from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path

import torch

from mixelbo import functional as F

ESTIMATORS = ("sample", "means", "mixture")
SHARES = (0.1, 0.5, 0.9)  # Vs / V: share of the aggregate variance from individual variances
BATCHES = (2, 4, 8, 16, 32, 64, 128, 256)
TABLE_BATCHES = (4, 16, 64, 256)
MEAN = 0.3  # aggregate mean m
LOG_SIGMA2_SPREAD = 0.5  # s, the spread of log sigma_i^2 across the population


def measure(
    share: float, batch: int, trials: int = 20_000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Bias and spread of each estimator for one population (``V = 1``) and batch size."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, trials)
    v_means, v_individual = 1.0 - share, share
    mu = MEAN + math.sqrt(v_means) * torch.randn(shape, generator=generator, dtype=torch.float64)
    s = LOG_SIGMA2_SPREAD
    logvar = (
        math.log(v_individual) - s * s / 2
        + s * torch.randn(shape, generator=generator, dtype=torch.float64)
    )  # fmt: skip
    z = mu + (0.5 * logvar).exp() * torch.randn(shape, generator=generator, dtype=torch.float64)
    true_kl = 0.5 * (1.0 + MEAN**2 - 1.0 - math.log(1.0))  # KL(N(m, V=1) || N(0, 1)) per dim
    result: dict[str, dict[str, float]] = {}
    for variance in ESTIMATORS:
        _, var = F.batch_moments(mu, logvar, z, variance=variance)
        kl = F.mixture_kl(mu, logvar, z, variance=variance, reduction="none")
        result[variance] = {
            "bias": var.mean().item() - 1.0,
            "std": var.std().item(),
            "kl_bias": kl.mean().item() - true_kl,
            "kl_std": kl.std().item(),
        }
    expected_spread = (batch - 1) / batch * v_means
    result["theory"] = {
        "means": expected_spread - 1.0,
        "mixture": v_individual + expected_spread - 1.0,
        "sample": v_individual + expected_spread - 1.0,
    }
    return result


def markdown_tables(results: dict[tuple[float, int], dict[str, dict[str, float]]]) -> str:
    lines = []
    for share in SHARES:
        lines += [
            f"**Vs / V = {share}** (individual variances are {share:.0%} of the aggregate)",
            "",
            "| b | estimator | bias of var (closed form) | std of var | bias of KL_G/dim "
            "| std of KL_G/dim |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for batch in TABLE_BATCHES:
            row = results[(share, batch)]
            for variance in ESTIMATORS:
                r = row[variance]
                lines.append(
                    f"| {batch} | `{variance}` | {r['bias']:+.3f} ({row['theory'][variance]:+.3f})"
                    f" | {r['std']:.3f} | {r['kl_bias']:+.3f} | {r['kl_std']:.3f} |"
                )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[tuple[float, int], dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(SHARES), figsize=(10, 5.2), sharex=True, sharey="row")
    styles = {"sample": "o-", "means": "s--", "mixture": "^-"}
    for col, share in enumerate(SHARES):
        for variance in ESTIMATORS:
            bias = [results[(share, b)][variance]["bias"] for b in BATCHES]
            std = [results[(share, b)][variance]["std"] for b in BATCHES]
            axes[0, col].plot(BATCHES, bias, styles[variance], label=variance, ms=4)
            axes[1, col].plot(BATCHES, std, styles[variance], label=variance, ms=4)
        axes[0, col].set_title(f"Vs / V = {share}")
        axes[0, col].axhline(0.0, color="grey", lw=0.8)
        axes[1, col].set_xlabel("batch size b")
        axes[1, col].set_xscale("log", base=2)
        axes[1, col].set_yscale("log")
    axes[0, 0].set_ylabel("relative bias  E[v]/V - 1")
    axes[1, 0].set_ylabel("relative std  std(v)/V")
    axes[0, 0].legend(title="variance=")
    fig.suptitle("Aggregate-variance estimators of MixtureKL (Monte Carlo, 20 000 trials each)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "img" / "estimators.png"
    )
    args = parser.parse_args()
    results = {
        (share, batch): measure(share, batch, args.trials, seed=1000 * i + batch)
        for i, share in enumerate(SHARES)
        for batch in BATCHES
    }
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(markdown_tables(results))
    plot(results, args.out)
    print(f"figure written to {args.out}")


if __name__ == "__main__":
    main()
