"""Training throughput and model FLOPs utilisation (MFU) of the reference VAE-GAN.

Times full training steps of ``mixelbo_reference.train`` (uint8 batch scaled to [-1, 1] on the
device, encode, sample, decode, ELBO_reg, VAE Adam step, discriminator step on eq. 23) on
synthetic uint8 images already on the device, so the number is the model's speed, not the data
pipeline's. FLOPs per step are counted once with
:class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls, forward and
backward); MFU = FLOPs per step / step time / peak FLOP/s, the peak known for common CUDA
devices (dense bf16 tensor-core peak) or given with ``--peak-tflops``.

Examples::

    python benchmarks/bench_train.py --config paper-256 --batch-size 64 --compile  # GPU
    python benchmarks/bench_train.py --config cpu-64 --device cpu

Writes ``benchmarks/results/train-<config>-<device>-<precision>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mixelbo_reference.config import PRESETS, TrainConfig
from mixelbo_reference.data import to_unit_range
from mixelbo_reference.models import build_discriminator, build_vae, count_parameters
from mixelbo_reference.objectives import build_objective

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # an unlabelled H100 is taken to be the SXM part
    "A100": 312.0,
    "L40S": 362.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a known CUDA device, else ``None``."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific names first
        if all(part in name for part in key.split()):
            return value
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper-256", choices=list(PRESETS))
    parser.add_argument("--objective", default="mixture")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument("--note", default="", help="free text stored with the result")
    parser.add_argument("--out", default=None, help="result JSON path")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"objective": args.objective, "precision": args.precision}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    config = TrainConfig.preset(args.config, **overrides)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    model_config = config.model_config
    vae = build_vae(model_config).to(device=device, memory_format=memory_format)
    disc = build_discriminator(model_config).to(device=device, memory_format=memory_format)
    vae_model: Any = torch.compile(vae) if args.compile else vae
    disc_model: Any = torch.compile(disc) if args.compile else disc
    objective: Any = build_objective(config, disc_model).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    betas = (config.adam_beta1, config.adam_beta2)
    opt_vae = torch.optim.Adam(vae.parameters(), lr=config.lr, betas=betas, **fused)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas, **fused)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    size = model_config.image_size
    shape = (config.batch_size, model_config.in_chs, size, size)
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    pixels = pixels.contiguous(memory_format=memory_format)

    def step() -> None:  # steps 1-3 of the loop in reference_model/train.py
        autocast = (
            torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        )
        x = to_unit_range(pixels)
        with autocast:
            x_hat, mu, logvar, z = vae_model(x)
            terms = objective(x, x_hat, mu, logvar, z)
        opt_vae.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        scaler.step(opt_vae)
        with autocast:
            disc_loss = objective.discriminator_loss(x, x_hat)
        opt_disc.zero_grad(set_to_none=True)
        scaler.scale(disc_loss).backward()
        scaler.step(opt_disc)
        scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    step_time = (time.perf_counter() - start) / args.steps

    # The paper's loss terms alone (KL_G + KL_I forward and backward) at this batch and latent
    # size: their share of the step is the "marginal computational cost" the paper claims.
    kl_time = None
    if hasattr(objective, "kl_g"):
        mu, logvar, z = (
            torch.randn(config.batch_size, model_config.latent_dim, device=device).requires_grad_()
            for _ in range(3)
        )

        def kl_step() -> None:
            (objective.kl_g(mu, logvar, z) + objective.kl_i(logvar)).backward()

        for _ in range(5):
            kl_step()
        sync()
        repeats = 100
        kl_start = time.perf_counter()
        for _ in range(repeats):
            kl_step()
        sync()
        kl_time = (time.perf_counter() - kl_start) / repeats

    counter = FlopCounterMode(display=False)
    with counter:  # eager: FlopCounterMode counts aten ops, compiled or not
        vae_model, disc_model = vae, disc
        objective = build_objective(config, disc).to(device)
        step()
    flops = counter.get_total_flops()
    peak = args.peak_tflops or peak_tflops(device)
    images_per_s = config.batch_size / step_time
    result = {
        "benchmark": "bench_train",
        "config": args.config,
        "objective": args.objective,
        "batch_size": config.batch_size,
        "image_size": size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "vae_parameters": count_parameters(vae),
        "discriminator_parameters": count_parameters(disc),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_time_s": step_time,
        "images_per_s": images_per_s,
        "flops_per_step": flops,
        "flops_per_image": flops / config.batch_size,
        "achieved_tflops": flops / step_time / 1e12,
        "peak_tflops": peak,
        "mfu": flops / step_time / (peak * 1e12) if peak else None,
        "loss_terms_time_s": kl_time,
        "loss_terms_fraction_of_step": kl_time / step_time if kl_time is not None else None,
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
    }
    out = Path(
        args.out
        or Path(__file__).parent / "results" / f"train-{args.config}-{device.type}-{precision}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
    overhead = (
        f", KL_G + KL_I {kl_time * 1e6:.0f} us = {kl_time / step_time:.2%} of a step"
        if kl_time is not None
        else ""
    )
    print(
        f"{args.config} on {result['device']} ({precision}, batch {config.batch_size}): "
        f"{images_per_s:.3g} images/s, {step_time * 1e3:.1f} ms/step, "
        f"{flops / config.batch_size / 1e9:.1f} GFLOP/image, "
        f"{result['achieved_tflops']:.3f} TFLOP/s{mfu}{overhead} -> {out}"
    )
    return result


if __name__ == "__main__":
    main()
