"""Benchmark: forward + backward of KL_G (eq. 19) + KL_I (eq. 20), three ways.

- ``eager``: the eager reference path (``mixelbo.functional`` with ``fused=False``);
- ``compiled``: ``torch.compile`` of that same eager expression (static shapes per size, the
  strongest setting for it);
- ``fused``: mixelbo's fused kernels (``fused=True``, the modules' default).

Each step builds the loss ``mixture_kl(mu, logvar, z) + individual_variance_kl(logvar)`` from
leaf tensors of shape ``(b, d)`` and back-propagates into all three. Compilation happens in a
warm-up that is excluded from the timings and reported separately (``compile_s``). Timings are
medians of ``torch.utils.benchmark.Timer.blocked_autorange``. On CUDA it also counts kernel
launches per step with ``torch.profiler`` and reports the achieved bandwidth of the fused path
against the device's peak.

Usage::

    python benchmarks/bench_losses.py            # full grid, CPU (+ CUDA if present)
    python benchmarks/bench_losses.py --quick    # one size, fp32, short runs (CI)

Results go to ``benchmarks/results/bench_losses-<device>-<timestamp>.json`` with a machine
description. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from mixelbo import functional as F

SIZES = [(64, 512), (256, 512), (32, 16 * 32 * 32), (512, 4096)]
QUICK_SIZES = [(64, 512)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("eager", "compiled", "fused")
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Peak DRAM bandwidth (bytes/s) of common GPUs from their vendors' datasheets, used when the
# driver does not report memory clock and bus width.
KNOWN_PEAK_BANDWIDTH = {
    "H100 SXM": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H200": 4.8e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100-PCIE-80GB": 1.935e12,
    "A100-SXM4-40GB": 1.555e12,
    "A100-PCIE-40GB": 1.555e12,
    "L4": 3.0e11,
    "A10G": 6.0e11,
    "T4": 3.2e11,
}


def machine_description(device: str) -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["peak_bandwidth_bytes_per_s"], info["peak_bandwidth_source"] = peak_bandwidth()
    return info


def peak_bandwidth() -> tuple[float | None, str]:
    """The device's peak DRAM bandwidth: from the reported memory clock and bus width
    (double data rate) when the driver exposes them, else from the datasheet table above."""
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, "2 x memory_clock_rate x memory_bus_width / 8"
    for name, peak in KNOWN_PEAK_BANDWIDTH.items():
        if name.lower() in props.name.lower():
            return peak, f"datasheet value for {name}"
    return None, "unknown (no clock/bus width reported and not in the datasheet table)"


def make_step(method: str, leaves: list[torch.Tensor], variance: str) -> Callable[[], None]:
    mu, logvar, z = leaves

    def expression(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        fused = method == "fused"
        kl_g = F.mixture_kl(mu, logvar, z, variance=variance, fused=fused)  # type: ignore[arg-type]
        return kl_g + F.individual_variance_kl(logvar, fused=fused)

    loss_fn = torch.compile(expression, dynamic=False) if method == "compiled" else expression

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        loss_fn(mu, logvar, z).backward()

    def forward() -> None:
        loss_fn(mu, logvar, z)

    step.forward = forward  # type: ignore[attr-defined]
    return step


def time_step(
    step: Callable[[], None], device: str, min_run_time: float, timer: str
) -> dict[str, float]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kwargs: dict[str, Any] = {}
    if timer == "process" and device == "cpu":
        kwargs["timer"] = time.process_time  # CPU time of this process: robust to other load
    measurement = benchmark.Timer(
        stmt="step(); sync()", globals={"step": step, "sync": sync}, **kwargs
    ).blocked_autorange(min_run_time=min_run_time)
    times = measurement.times
    return {
        "median_us": statistics.median(times) * 1e6,
        "iqr_us": measurement.iqr * 1e6,
        "runs": len(times),
        "number_per_run": measurement.number_per_run,
    }


def cuda_launches(step: Callable[[], None]) -> int:
    """CUDA device activities (kernels, memsets, copies) of one call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sum(1 for event in prof.events() if event.device_type == cuda)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch._dynamo.config.cache_size_limit = 64  # static-shape baseline: one graph per case
    sizes = QUICK_SIZES if args.quick else SIZES
    dtypes = ["fp32"] if args.quick else args.dtypes
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [args.device]
    rows: list[dict[str, Any]] = []
    for device in devices:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for b, d in sizes:
                generator = torch.Generator().manual_seed(0)
                base = [torch.randn(b, d, generator=generator) for _ in range(3)]
                leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in base]
                for method in METHODS:
                    step = make_step(method, leaves, args.variance)
                    start = time.perf_counter()
                    for _ in range(3):  # compile (where any) and warm up; not timed below
                        step()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    row: dict[str, Any] = {
                        "device": device, "dtype": dtype_name, "b": b, "d": d,
                        "method": method, "warmup_s": time.perf_counter() - start,
                    }  # fmt: skip
                    row |= time_step(step, device, args.min_run_time, args.timer)
                    if device == "cuda":
                        row["kernel_launches_per_step"] = cuda_launches(step)
                        row["kernel_launches_forward"] = cuda_launches(step.forward)  # type: ignore[attr-defined]
                        # fwd reads mu, z, logvar; bwd reads them again and writes 3 grads
                        moved = 9 * b * d * leaves[0].element_size()
                        row["bytes_moved_min"] = moved
                        row["achieved_gb_per_s"] = moved / (row["median_us"] * 1e-6) / 1e9
                    rows.append(row)
                    print_row(row)
    return {"rows": rows, "machine": machine_description(devices[-1])}


def print_row(row: dict[str, Any]) -> None:
    extra = ""
    if "kernel_launches_per_step" in row:
        extra = (
            f"  launches {row['kernel_launches_per_step']:3d}  {row['achieved_gb_per_s']:8.1f} GB/s"
        )
    print(
        f"{row['device']:4s} {row['dtype']:4s} {row['b']:5d} x {row['d']:6d}  {row['method']:8s}"
        f"  median {row['median_us']:10.1f} us  (IQR {row['iqr_us']:8.1f})"
        f"  warm-up {row['warmup_s']:6.2f} s{extra}",
        flush=True,
    )


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    keys = sorted({(r["device"], r["dtype"], r["b"], r["d"]) for r in rows})
    for key in keys:
        by_method = {
            r["method"]: r["median_us"]
            for r in rows
            if (r["device"], r["dtype"], r["b"], r["d"]) == key
        }
        table.append({
            "device": key[0], "dtype": key[1], "b": key[2], "d": key[3],
            "fused_vs_eager": by_method["eager"] / by_method["fused"],
            "fused_vs_compiled": by_method["compiled"] / by_method["fused"],
        })  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one size, fp32, short runs (CI)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    parser.add_argument("--variance", choices=F.VARIANCES, default="sample")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per case")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--timer", choices=("wall", "process"), default="wall",
        help="CPU only: 'process' times CPU time of this process (use on a shared machine "
        "with --threads 1; with more threads it sums over threads)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.min_run_time is None:
        args.min_run_time = 0.2 if args.quick else 2.0
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    result = run(args)
    result["speedups"] = speedups(result["rows"])
    result["settings"] = {
        "quick": args.quick, "variance": args.variance, "min_run_time_s": args.min_run_time,
        "timer": args.timer, "loss": "mixture_kl(mu, logvar, z) + individual_variance_kl(logvar)",
        "timed": "forward + backward into mu, logvar, z (grads reset each step)",
        "command": " ".join(sys.argv),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_s": time.perf_counter() - started,
    }  # fmt: skip
    print("\nspeed-up of the fused path (median time ratio):")
    for s in result["speedups"]:
        print(
            f"  {s['device']:4s} {s['dtype']:4s} {s['b']:5d} x {s['d']:6d}"
            f"  vs eager {s['fused_vs_eager']:5.2f}x"
            f"   vs torch.compile {s['fused_vs_compiled']:5.2f}x"
        )
    out = args.out
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        device = "cuda" if any(r["device"] == "cuda" for r in result["rows"]) else "cpu"
        out = RESULTS_DIR / f"bench_losses-{device}{'-quick' if args.quick else ''}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out} ({result['settings']['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
