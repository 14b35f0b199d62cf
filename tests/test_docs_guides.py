"""The documentation's code runs: every ```python block of the guide pages, on CPU.

Each page's blocks are executed in order in one namespace (a page builds its example up step
by step), as a reader would paste them. Two substitutions keep this fast and leave what the
pages show unchanged: ``torch.compile`` uses ``backend="eager"`` (the graph is still traced by
Dynamo, so a graph break or an untraceable op still fails), and ``MIXELBO_COMPILE=0`` keeps the
fused loss on its eager path (its compiled kernels have their own tests). The pages check
their own results with ``assert``; the tests below add oracles of their own.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import mixelbo  # noqa: F401  (loads mixelbo._fused, whose kernel cache run_page isolates)

DOCS = Path(__file__).resolve().parents[1] / "docs"
GUIDE_PAGES = [
    "index.md",
    "getting-started.md",
    "guides/vector-vae.md",
    "guides/spatial-latents.md",
    "guides/accelerate.md",
    "guides/multi-gpu.md",
    "guides/precision-compile.md",
    "weights.md",
    "samplers.md",
]
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[str]:
    return _BLOCK.findall((DOCS / page).read_text())


def run_page(page: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Execute the page's python blocks in order in one namespace and return it."""
    monkeypatch.setenv("MIXELBO_COMPILE", "0")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    fused = sys.modules.get("mixelbo._fused")
    if fused is not None and hasattr(fused, "_compiled"):  # keep eager-backend kernels local
        monkeypatch.setattr(fused, "_compiled", dict(fused._compiled))
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for index, block in enumerate(python_blocks(page)):
        exec(compile(block, f"{page} block {index}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_page_has_code(page: str) -> None:
    assert python_blocks(page), f"{page} has no ```python block to test"


@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_page_runs(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_page(page, monkeypatch)


def _load_estimators_script() -> Any:
    spec = importlib.util.spec_from_file_location("estimators", DOCS / "scripts" / "estimators.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("share", "batch"), [(0.1, 4), (0.5, 16), (0.9, 64)])
def test_estimator_measurement_matches_closed_form(
    share: float, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figure script's Monte Carlo agrees with the closed-form bias of each estimator.

    Oracle: for b iid posteriors with Var(mu) = Vm and E[sigma^2] = Vs, the 1/b batch
    variance of the means has expectation (b-1)/b Vm, and "mixture" and "sample" add Vs.
    Tolerance: 5 standard errors of the Monte-Carlo mean.
    """
    monkeypatch.setenv("MIXELBO_COMPILE", "0")  # the eager path: no kernel compilation here
    script = _load_estimators_script()
    trials = 4000
    result = script.measure(share, batch, trials=trials, seed=7)
    v_means, v_individual = 1.0 - share, share
    expected = {
        "means": (batch - 1) / batch * v_means - 1.0,
        "mixture": v_individual + (batch - 1) / batch * v_means - 1.0,
        "sample": v_individual + (batch - 1) / batch * v_means - 1.0,
    }
    for variance, bias in expected.items():
        standard_error = result[variance]["std"] / math.sqrt(trials)
        assert abs(result[variance]["bias"] - bias) < 5 * standard_error + 1e-12, variance
    # "sample" adds the reparameterisation noise on top of "mixture": never less spread
    assert result["sample"]["std"] > result["mixture"]["std"]


@pytest.mark.distributed
def test_multi_gpu_script_under_torchrun_two_processes(tmp_path: Path) -> None:
    """The multi-GPU guide's script, launched by torchrun with 2 CPU processes (gloo)."""
    script = next(b for b in python_blocks("guides/multi-gpu.md") if "def main" in b)
    path = tmp_path / "train_ddp.py"
    path.write_text(script)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(path),
    ]  # fmt: skip
    launcher_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env |= {"MIXELBO_COMPILE": "0", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    output = done.stdout[-3000:] + done.stderr[-3000:]
    rank_errors = re.findall(r"^\[rank\d\]:.*(?:Error|Exception).*$", done.stderr, re.MULTILINE)
    if (
        done.returncode != 0
        and not rank_errors
        and "done: world size 2" in done.stdout
        and "terminate called without an active exception" in done.stderr
    ):
        # Both ranks finished the guide's work (its asserts included), then one aborted while
        # the interpreter shut down: a PyTorch gloo teardown race seen rarely on a loaded
        # machine (pytorch/pytorch#179291), not a fault of the script. Reported, not hidden.
        pytest.xfail("PyTorch gloo teardown abort after a successful run")
    assert done.returncode == 0, output
    assert "done: world size 2" in done.stdout


def _troubleshooting_cases() -> list[tuple[str, Any]]:
    from mixelbo import IndividualVarianceKL, MixtureKL, PatchGANLoss, RegularizedELBO

    mu, logvar = torch.randn(8, 4), torch.zeros(8, 4)
    image = torch.zeros(2, 3, 8, 8)
    return [
        ("variance must be one of 'sample', 'means', 'mixture'; got", lambda: MixtureKL("x")),
        ("reduction must be one of 'sum', 'mean', 'none'; got", lambda: MixtureKL(reduction="x")),
        (
            "reduction must be one of 'sum', 'batchmean', 'mean', 'none'; got",
            lambda: IndividualVarianceKL(reduction="x"),
        ),
        ("form must be one of 'paper', 'kl'; got", lambda: IndividualVarianceKL(form="x")),
        (
            'variance="sample" (eq. 18) needs the sampled latents z; got z=None',
            lambda: MixtureKL(variance="sample")(mu, logvar),
        ),
        (
            'variance="mixture" needs logvar; got logvar=None',
            lambda: MixtureKL(variance="mixture")(mu, None),
        ),
        (
            "needs at least 2 samples to estimate the aggregate posterior's moments; got 1",
            lambda: MixtureKL(variance="means")(mu[:1], None),
        ),
        (
            "z must have the shape of mu (",
            lambda: MixtureKL(variance="sample")(mu, logvar, mu[:, :3]),
        ),
        (
            "must be float64, float32, bfloat16 or float16; got torch.int64",
            lambda: MixtureKL(variance="means")(mu.long(), None),
        ),
        ("must be a torch.Tensor; got", lambda: MixtureKL(variance="means")(mu.numpy(), None)),
        (
            "must have shape (batch, *latent_dims) with at least one latent axis; got shape (",
            lambda: MixtureKL(variance="means")(mu[:, 0], None),
        ),
        (
            "does not apply to",
            lambda: MixtureKL(variance="means", pattern="b c h w -> (b h w) c")(mu, None),
        ),
        (
            "pattern must map",
            lambda: MixtureKL(variance="means", pattern="b d -> b d 1")(mu, None),
        ),
        (
            "covariance must be one of 'diagonal', 'full'; got",
            lambda: MixtureKL(covariance="dense"),  # type: ignore[arg-type]
        ),
        (
            "reduction='none' (per latent dim) does not apply to covariance='full'",
            lambda: MixtureKL(covariance="full", reduction="none"),
        ),
        (
            "needs more samples than latent dims",
            lambda: MixtureKL(variance="means", covariance="full")(mu[:3], None),
        ),
        (
            "samples <= d=",
            lambda: MixtureKL(variance="means", covariance="full")(mu[:3], None),
        ),
        (
            "is singular to float64 precision",
            lambda: MixtureKL(variance="means", covariance="full")(
                torch.cat([mu[:, :1], mu[:, :1]], 1), None
            ),
        ),
        ("loss must be one of 'bce', 'hinge', 'lsgan'; got", lambda: PatchGANLoss(loss="x")),
        (
            "discriminator_loss needs an adversarial term; this ELBO has beta4=0",
            lambda: RegularizedELBO(beta4=0).discriminator_loss(image, image),
        ),
    ]


@pytest.mark.parametrize(("fragment", "call"), _troubleshooting_cases())
def test_troubleshooting_lists_the_message(fragment: str, call: Any) -> None:
    """The library raises the quoted message and docs/troubleshooting.md quotes it."""
    with pytest.raises(ValueError) as raised:
        call()
    assert fragment in str(raised.value)
    assert fragment in (DOCS / "troubleshooting.md").read_text()
