"""Benchmark: ``MixtureKL(covariance="full")``, forward + backward, against the plain expression.

Each step evaluates the full-covariance KL_G, KL(N(m, S) || N(0, I)) = 1/2 (tr S + m.m - d -
log det S), on float32 leaf tensors ``mu``, ``logvar`` (and ``z`` for ``"sample"``) of shape
``(N, d)`` and back-propagates into them, four ways:

- ``plain``: what a user would write, in the inputs' float32, differentiated by autograd::

      m = mu.mean(0); dev = mu - m                      # z - m for "sample"
      S = dev.T @ dev / N + torch.diag(lv.exp().mean(0))  # the diag term for "mixture" only
      kl = 0.5 * (S.trace() + m @ m - d - torch.logdet(S))

- ``reference``: mixelbo's reference path (``fused=False``): the same in float64 through a
  Cholesky factorisation, differentiated by autograd;
- ``default``: what ``MixtureKL(covariance="full")`` runs: float64, closed-form gradient, and
  for ``"mixture"`` with ``N <= d`` the low-rank path (an ``(N - 1) x (N - 1)`` factorisation);
- ``diagonal``: eq. 19 as ``MixtureKL()`` runs it (the diagonal covariance), for scale;
- ``compiled`` (only with ``--methods ... compiled``): ``torch.compile`` of ``plain``.

The methods run interleaved, one block of steps per method and round, so a change in the
machine's load hits all of them alike. Each row reports the per-step median and minimum of
the wall time and of this process's CPU time (``time.process_time``; on a shared machine with
``--threads 1`` the CPU time is the cost, the wall time adds the time the process waited for
a core), the first step apart (``first_s``), and the value's relative error against the float64
oracle ``torch.distributions`` KL of ``MultivariateNormal`` on the same (float32) inputs.

Usage::

    python benchmarks/bench_full_covariance.py --threads 1            # the grid of docs
    python benchmarks/bench_full_covariance.py --cases 64,32,mixture  # N,d,variance cases
    python benchmarks/bench_full_covariance.py --quick                # one small case (tests)
    python benchmarks/bench_full_covariance.py --accuracy             # errors, ill-conditioned S

``--accuracy`` times nothing: it reports each method's relative error of the value, and of the
gradient for ``mu`` (max abs deviation / max abs of the float64 autograd gradient through
``torch.distributions``), on float32 inputs whose
covariance has eigenvalues from 1e-2, 1e-4 or 1e-6 up to 1e2 (N = 4000, d = 16 and 64).

Results go to ``benchmarks/results/bench_full_covariance-cpu[-quick]-<UTC timestamp>.json``
(``bench_full_covariance-accuracy-<UTC timestamp>.json`` for ``--accuracy``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from bench_losses import load_average, machine_description, write_json  # beside this file
from torch.distributions import MultivariateNormal, kl_divergence

from mixelbo import functional as F

# (N, d, variance): for each d a small batch with "mixture" (N <= d for d >= 512: the low-rank
# path) and a batch large enough for a full-rank "means" covariance
CASES = [
    (64, 32, "mixture"),
    (64, 32, "means"),
    (1024, 32, "sample"),
    (64, 512, "mixture"),
    (1024, 512, "mixture"),
    (1024, 512, "means"),
    (64, 4096, "mixture"),
    (8192, 4096, "means"),
]
QUICK_CASES = [(64, 8, "mixture")]
METHODS = ("plain", "reference", "default", "diagonal")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def plain_expression(variance: str) -> Callable[..., torch.Tensor]:
    def plain(mu: torch.Tensor, lv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n, d = mu.shape
        m = mu.mean(0)
        dev = (z if variance == "sample" else mu) - m
        cov = dev.T @ dev / n
        if variance == "mixture":
            cov = cov + torch.diag(lv.exp().mean(0))
        return 0.5 * (cov.trace() + m @ m - d - torch.logdet(cov))

    return plain


def loss_function(method: str, variance: str) -> Callable[..., torch.Tensor]:
    if method == "plain":
        return plain_expression(variance)
    if method == "compiled":
        return torch.compile(plain_expression(variance), dynamic=False)  # type: ignore[no-any-return]
    covariance = "diagonal" if method == "diagonal" else "full"
    fused = False if method == "reference" else None

    def loss(mu: torch.Tensor, lv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.mixture_kl(mu, lv, z, variance=variance, covariance=covariance, fused=fused)

    return loss


def inputs(n: int, d: int, variance: str) -> list[torch.Tensor]:
    """Correlated means (per-dim scales 0.3 to 3 plus a shared factor), log-variances around
    -1, z = mu + sigma eps; float32 leaves."""
    g = torch.Generator().manual_seed(n * 7919 + d)
    scales = torch.logspace(-0.5, 0.5, d)
    mu = 0.2 + torch.randn(n, d, generator=g) * scales + 0.5 * torch.randn(n, 1, generator=g)
    lv = -1.0 + 0.1 * torch.randn(n, d, generator=g)
    z = mu + torch.randn(n, d, generator=g) * (0.5 * lv).exp()
    return [t.requires_grad_() for t in (mu, lv, z)]


def oracle(leaves: list[torch.Tensor], variance: str) -> float:
    """The float64 KL through torch.distributions on the same inputs (None-free cases)."""
    mu, lv, z = (t.detach().double() for t in leaves)
    mean, cov = F.batch_covariance(mu, lv, z, variance=variance)
    eye = torch.eye(mean.shape[0], dtype=torch.float64)
    prior = MultivariateNormal(torch.zeros_like(mean), eye)
    return float(kl_divergence(MultivariateNormal(mean, 0.5 * (cov + cov.T)), prior))


def ill_conditioned(n: int, d: int, smallest: float, variance: str) -> list[torch.Tensor]:
    """float32 leaves whose covariance S has eigenvalues log-spaced from ``smallest`` to 1e2
    (a random rotation, mean 3): the accuracy cases. ``"mixture"``: sigma^2 = e^-30."""
    g = torch.Generator().manual_seed(d)
    rotation = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    white = torch.randn(n, d, generator=g, dtype=torch.float64)
    white = white - white.mean(0)
    white = white @ torch.linalg.inv(torch.linalg.cholesky(white.T @ white / n)).T
    eigen = torch.logspace(torch.log10(torch.tensor(smallest)).item(), 2, d, dtype=torch.float64)
    mu = 3.0 + white @ (eigen.sqrt()[:, None] * rotation)
    lv = torch.full((n, d), -30.0, dtype=torch.float64)
    return [t.float().requires_grad_() for t in (mu, lv, mu.clone())]


def accuracy(methods: list[str]) -> list[dict[str, Any]]:
    """The relative error of each method's value against the float64 oracle on float32 inputs
    with ill-conditioned S (no timing); ``None`` where the method fails or returns non-finite."""
    rows = []
    for d, smallest in ((16, 1e-2), (16, 1e-4), (16, 1e-6), (64, 1e-4), (64, 1e-6)):
        for variance in ("means", "mixture"):
            leaves = ill_conditioned(4000, d, smallest, variance)
            want = oracle(leaves, variance)
            want_grad = oracle_gradient(leaves, variance)
            for method in methods:
                if method == "diagonal":
                    continue
                leaves[0].grad = None
                try:
                    kl = loss_function(method, variance)(*leaves)
                    kl.backward()
                except (ValueError, RuntimeError) as error:  # e.g. a failed factorisation
                    value, failure = float("nan"), f"{type(error).__name__}: {error}"[:200]
                else:
                    value, failure = float(kl.detach()), None
                grad = leaves[0].grad
                finite = value == value and abs(value) != float("inf")
                grad_error = None
                if grad is not None and bool(torch.isfinite(grad).all()):
                    scale = want_grad.abs().max()
                    grad_error = float((grad.double() - want_grad).abs().max() / scale)
                rows.append({
                    "n": 4000, "d": d, "variance": variance, "smallest_eigenvalue": smallest,
                    "largest_eigenvalue": 100.0, "method": method, "value": value,
                    "oracle": want, "failure": failure,
                    "relative_error": abs(value - want) / abs(want) if finite else None,
                    "mu_gradient_error": grad_error,
                })  # fmt: skip
    return rows


def print_accuracy(rows: list[dict[str, Any]]) -> None:
    print(f"{'d':>4} {'eig min':>8} {'variance':8} {'method':10} {'rel.err':>9} {'grad err':>9}")
    for row in rows:
        error = "-" if row["relative_error"] is None else f"{row['relative_error']:.1e}"
        grad = "-" if row["mu_gradient_error"] is None else f"{row['mu_gradient_error']:.1e}"
        print(
            f"{row['d']:4d} {row['smallest_eigenvalue']:8.0e} {row['variance']:8}"
            f" {row['method']:10} {error:>9} {grad:>9}  {row['failure'] or ''}"
        )


def oracle_gradient(leaves: list[torch.Tensor], variance: str) -> torch.Tensor:
    """d KL / d mu of the float64 torch.distributions KL on the same inputs (autograd)."""
    mu, lv, z = (t.detach().double().requires_grad_() for t in leaves)
    n = mu.shape[0]
    m = mu.mean(0)
    dev = (z if variance == "sample" else mu) - m
    cov = dev.T @ dev / n
    if variance == "mixture":
        cov = cov + torch.diag(lv.exp().mean(0))
    eye = torch.eye(m.shape[0], dtype=torch.float64)
    prior = MultivariateNormal(torch.zeros_like(m), eye)
    kl = kl_divergence(MultivariateNormal(m, 0.5 * (cov + cov.T)), prior)
    (grad,) = torch.autograd.grad(kl, mu)
    return grad


class Step:
    def __init__(self, loss: Callable[..., torch.Tensor], leaves: list[torch.Tensor]) -> None:
        self.loss, self.leaves = loss, leaves

    def __call__(self) -> float:
        for leaf in self.leaves:
            leaf.grad = None
        value = self.loss(*self.leaves)
        value.backward()
        return float(value.detach())


def time_case(
    n: int, d: int, variance: str, methods: list[str], min_time: float, max_rounds: int
) -> list[dict[str, Any]]:
    leaves = inputs(n, d, variance)
    want = oracle(leaves, variance)
    steps = {m: Step(loss_function(m, variance), leaves) for m in methods}
    rows: dict[str, dict[str, Any]] = {}
    for method, step in steps.items():  # first steps (compilation, allocation) apart
        started = time.perf_counter()
        value = step()
        rows[method] = {
            "method": method, "n": n, "d": d, "variance": variance,
            "first_s": time.perf_counter() - started,
            "value": value,
            "relative_error": abs(value - want) / abs(want) if method != "diagonal" else None,
            "wall_s": [], "cpu_s": [],
        }  # fmt: skip
    # steps per block: about 20 ms of the method's first step, at least one
    block = {m: max(1, int(0.02 / max(rows[m]["first_s"], 1e-6))) for m in methods}
    spent, rounds = 0.0, 0
    while rounds < 3 or (spent < min_time * len(methods) and rounds < max_rounds):
        order = methods[rounds % len(methods) :] + methods[: rounds % len(methods)]
        for method in order:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(block[method]):
                steps[method]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows[method]["wall_s"].append(wall / block[method])
            rows[method]["cpu_s"].append(cpu / block[method])
            spent += wall
        rounds += 1
    for row in rows.values():
        row["rounds"] = rounds
        for key in ("wall", "cpu"):
            row[f"{key}_median_ms"] = 1e3 * statistics.median(row[f"{key}_s"])
            row[f"{key}_min_ms"] = 1e3 * min(row[f"{key}_s"])
    return list(rows.values())


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = f"{'N':>6} {'d':>5} {'variance':8} {'method':10} {'cpu ms':>10} {'wall ms':>10}"
    print(header + f" {'min cpu':>10} {'first s':>8} {'rel.err':>9} {'vs plain':>8}")
    for row in rows:
        plain = next(
            (r for r in rows if r["method"] == "plain" and (r["n"], r["d"], r["variance"])
             == (row["n"], row["d"], row["variance"])), None,
        )  # fmt: skip
        speedup = plain["cpu_median_ms"] / row["cpu_median_ms"] if plain else float("nan")
        error = "-" if row["relative_error"] is None else f"{row['relative_error']:.1e}"
        print(
            f"{row['n']:6d} {row['d']:5d} {row['variance']:8} {row['method']:10}"
            f" {row['cpu_median_ms']:10.3f} {row['wall_median_ms']:10.3f}"
            f" {row['cpu_min_ms']:10.3f} {row['first_s']:8.3f} {error:>9} {speedup:7.2f}x"
        )


def _case(text: str) -> tuple[int, int, str]:
    try:
        n, d, variance = text.split(",")
        case = (int(n), int(d), variance)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,D,VARIANCE; got {text!r}") from None
    if variance not in F.VARIANCES or case[0] < 2 or case[1] < 1:
        raise argparse.ArgumentTypeError(f"expected N >= 2, D >= 1, a variance; got {text!r}")
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case, short (tests)")
    parser.add_argument(
        "--cases", nargs="+", type=_case, default=None, metavar="N,D,VARIANCE",
        help="cases (default: " + " ".join(f"{n},{d},{v}" for n, d, v in CASES) + ")",
    )  # fmt: skip
    parser.add_argument(
        "--methods", nargs="+", choices=(*METHODS, "compiled"), default=list(METHODS)
    )
    parser.add_argument("--min-time", type=float, default=None, help="seconds per method/case")
    parser.add_argument("--max-rounds", type=int, default=15)
    parser.add_argument(
        "--accuracy", action="store_true",
        help="no timing: each method's error on float32 inputs with ill-conditioned S",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = args.cases or (QUICK_CASES if args.quick else CASES)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 1.0)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine_description("cpu") | {"load_average_before": load_average()},
        "rows": [],
    }
    label = f"bench_full_covariance-cpu{'-quick' if args.quick else ''}"
    if args.accuracy:
        label, cases = "bench_full_covariance-accuracy", []
        result["accuracy"] = accuracy(list(args.methods))
        print_accuracy(result["accuracy"])
    partial = (args.out or RESULTS_DIR / label).with_suffix(".partial.json")
    for n, d, variance in cases:
        rows = time_case(n, d, variance, list(args.methods), min_time, args.max_rounds)
        result["rows"].extend(rows)
        print_rows(rows)
        sys.stdout.flush()
        write_json(partial, result | {"partial": True})
    result["machine"]["load_average_after"] = load_average()
    result["settings"] = {
        "quick": args.quick, "min_time_s": min_time, "methods": list(args.methods),
        "command": " ".join(sys.argv), "dtype": "float32 inputs",
        "timed": "forward + backward into mu, logvar, z (grads reset each step), methods "
        "interleaved round by round",
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_s": time.perf_counter() - started,
    }  # fmt: skip
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"{label}-{stamp}.json"
    write_json(out, result)
    partial.unlink(missing_ok=True)
    print(f"\nwrote {out} ({result['settings']['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
