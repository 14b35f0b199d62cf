"""A user's ``torch.compile(fullgraph=True)`` traces through mixelbo's fused custom ops.

A small VAE computes MixtureKL (every estimator), IndividualVarianceKL and RegularizedELBO
(no discriminator) inside its forward. Dynamo must capture it as one graph (``explain``
reports no break), ``fullgraph=True`` must compile, and the compiled values and parameter
gradients must equal those of the eager reference path (``MIXELBO_COMPILE=0``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mixelbo import IndividualVarianceKL, MixtureKL, RegularizedELBO


class TinyVAE(nn.Module):
    def __init__(self, in_chs: int = 12, latent: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Linear(in_chs, 2 * latent)
        self.decoder = nn.Linear(latent, in_chs)
        self.kl_g = nn.ModuleList(MixtureKL(variance=v) for v in ("sample", "means", "mixture"))
        self.kl_i = IndividualVarianceKL(reduction="batchmean")
        self.elbo = RegularizedELBO(beta4=0.0, kl_i_reduction="mean")

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + noise * (0.5 * logvar).exp()
        x_hat = self.decoder(z).tanh()
        kl_g = sum(kl(mu, logvar, z) for kl in self.kl_g)
        terms = self.elbo(x, x_hat, mu, logvar, z)
        return terms.total + kl_g + self.kl_i(logvar)


def _inputs(batch: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 12, generator=generator), torch.randn(batch, 4, generator=generator)


def test_explain_reports_no_graph_break() -> None:
    torch._dynamo.reset()
    model = TinyVAE()
    explanation = torch._dynamo.explain(model)(*_inputs(8))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    ops = [str(node.target) for graph in explanation.graphs for node in graph.graph.nodes]
    assert sum("mixelbo.mixture_kl" in op for op in ops) == 4  # 3 MixtureKL + the ELBO's
    assert sum("mixelbo.individual_variance_kl" in op for op in ops) == 2


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fullgraph_compile_matches_eager(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyVAE()
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=True)
    for batch in (8, 13):  # a second batch size runs under the same dynamic graph
        x, noise = _inputs(batch)
        model.zero_grad()
        compiled(x, noise).backward()
        got = [p.grad.clone() for p in model.parameters()]
        got_loss = compiled(x, noise).detach()

        monkeypatch.setenv("MIXELBO_COMPILE", "0")  # the eager reference path as the oracle
        model.zero_grad()
        want_loss = model(x, noise)
        want_loss.backward()
        monkeypatch.delenv("MIXELBO_COMPILE")
        torch.testing.assert_close(got_loss, want_loss.detach(), rtol=1e-5, atol=1e-5)
        for g, p in zip(got, model.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
