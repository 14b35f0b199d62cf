"""Global-batch moments under torch.distributed: two real gloo processes on CPU.

Oracle: the eager reference ``mixture_kl`` on the concatenated batch in one process (float64);
the two-process run with ``MixtureKL(sync=True)`` inside a DDP-wrapped encoder must give the
same KL_G on every rank and, after DDP's gradient averaging, the same parameter gradients.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mixelbo import MixtureKL
from mixelbo import functional as F
from mixelbo.distributed import is_synced, synced_batch_covariance, synced_batch_moments

VARIANCES = ("sample", "means", "mixture")
IN_FEATURES, LATENT = 5, 3
# per variance: the rank batch sizes (uneven in two cases)
BATCHES = {"sample": (5, 3), "means": (4, 4), "mixture": (2, 7)}


def _encoder() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Linear(IN_FEATURES, 2 * LATENT).double()


def _data(variance: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    total = sum(BATCHES[variance])
    x = 3.0 * torch.randn(total, IN_FEATURES, generator=generator, dtype=torch.float64) + 1.0
    noise = torch.randn(total, LATENT, generator=generator, dtype=torch.float64)
    return x, noise


def _latents(
    encoder: nn.Module, x: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu, logvar = encoder(x).chunk(2, dim=1)
    return mu, logvar, mu + noise * (0.5 * logvar).exp()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        results = {}
        for variance in VARIANCES:
            x, noise = _data(variance)
            sizes = BATCHES[variance]
            start = sum(sizes[:rank])
            rows = slice(start, start + sizes[rank])
            model = DistributedDataParallel(_encoder())
            mu, logvar, z = _latents(model, x[rows], noise[rows])
            kl_g = MixtureKL(variance=variance, sync=True)(mu, logvar, z)
            local = F.mixture_kl(
                mu.detach(), logvar.detach(), z.detach(), variance=variance, fused=False
            )
            kl_g.backward()
            results[variance] = {
                "kl_g": kl_g.detach(),
                "local": local,
                "grads": [p.grad.clone() for p in model.parameters()],
            }
            # covariance="full": the global N > d even where a rank holds N_r <= d samples
            model = DistributedDataParallel(_encoder())
            mu, logvar, z = _latents(model, x[rows], noise[rows])
            kl_full = MixtureKL(variance=variance, covariance="full", sync=True)(mu, logvar, z)
            kl_full.backward()
            results[f"full-{variance}"] = {
                "kl_g": kl_full.detach(),
                "local": _local_full_kl(mu.detach(), logvar.detach(), z.detach(), variance),
                "grads": [p.grad.clone() for p in model.parameters()],
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # both ranks done before teardown (gloo can abort on a racing exit)
    finally:
        dist.destroy_process_group()


def _local_full_kl(
    mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, variance: str
) -> torch.Tensor | None:
    """The full-covariance KL of this rank's batch alone, where it exists (N_r > d)."""
    if variance != "mixture" and mu.shape[0] <= LATENT:
        return None
    return F.mixture_kl(mu, logvar, z, variance=variance, covariance="full", fused=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("variance", VARIANCES)
def test_ddp_matches_one_process_on_the_concatenated_batch(
    two_rank_results: list[dict], variance: str
) -> None:
    encoder = _encoder()
    x, noise = _data(variance)
    mu, logvar, z = _latents(encoder, x, noise)
    reference = F.mixture_kl(mu, logvar, z, variance=variance, fused=False)
    reference.backward()
    for rank in range(2):
        result = two_rank_results[rank][variance]
        torch.testing.assert_close(result["kl_g"], reference.detach(), rtol=1e-12, atol=1e-12)
        # the local-batch value differs: the test can tell synced from unsynced moments
        assert not torch.allclose(result["local"], reference.detach(), rtol=1e-6)
        for grad, param in zip(result["grads"], encoder.parameters(), strict=True):
            torch.testing.assert_close(grad, param.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variance", VARIANCES)
def test_ddp_full_covariance_matches_one_process_on_the_concatenated_batch(
    two_rank_results: list[dict], variance: str
) -> None:
    """covariance="full" under DDP: value and parameter gradients of the one-process
    full-covariance KL (the closed form) on the concatenated batch. For "sample" one rank
    holds 3 samples of a 3-dim latent (singular alone), for "mixture" one holds 2."""
    encoder = _encoder()
    x, noise = _data(variance)
    mu, logvar, z = _latents(encoder, x, noise)
    reference = F.mixture_kl(mu, logvar, z, variance=variance, covariance="full")
    reference.backward()
    assert min(BATCHES[variance]) <= LATENT or variance == "means"
    for rank in range(2):
        result = two_rank_results[rank][f"full-{variance}"]
        torch.testing.assert_close(result["kl_g"], reference.detach(), rtol=1e-11, atol=1e-12)
        if result["local"] is not None:
            assert not torch.allclose(result["local"], reference.detach(), rtol=1e-6)
        for grad, param in zip(result["grads"], encoder.parameters(), strict=True):
            torch.testing.assert_close(grad, param.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variance", VARIANCES)
def test_sync_is_a_no_op_without_a_process_group(
    variance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXELBO_COMPILE", "0")  # compare eager with eager: no compile needed
    assert not dist.is_initialized()
    assert not is_synced(True)
    mu, logvar, z = (torch.randn(6, 4, dtype=torch.float64) for _ in range(3))
    synced = MixtureKL(variance=variance, sync=True)(mu, logvar, z)
    torch.testing.assert_close(synced, F.mixture_kl(mu, logvar, z, variance=variance, fused=False))


def test_synced_moments_in_a_one_rank_group_equal_batch_moments(tmp_path: Path) -> None:
    """The Chan combination with one rank reduces to the local moments (float64 oracle:
    the eager batch_moments); exercised in-process with a world of one."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        assert not is_synced(True)  # one rank: MixtureKL stays local
        mu, logvar, z = (3.0 * torch.randn(9, 2, 4, dtype=torch.float64) + 5 for _ in range(3))
        for variance in VARIANCES:
            got = synced_batch_moments(mu, logvar, z, variance=variance)
            want = F.batch_moments(mu, logvar, z, variance=variance)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            got = synced_batch_covariance(mu, logvar, z, variance=variance)
            want = F.batch_covariance(mu, logvar, z, variance=variance)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="z"):
            synced_batch_moments(mu, logvar, None, variance="sample")
    finally:
        dist.destroy_process_group()
