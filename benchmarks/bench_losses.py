"""Benchmark: forward + backward of KL_G (eq. 19) + KL_I (eq. 20) against the plain expression.

Each step evaluates ``mixture_kl(mu, logvar, z) + 0.5 * individual_variance_kl(logvar)`` (the
eq. 18 ``"sample"`` estimator by default, KL_I summed) on leaf tensors of shape ``(b, d)`` and
back-propagates into all three, five ways:

- ``plain``: the expression a user would write instead of mixelbo (the baseline)::

      m = mu.mean(0); v = ((z - m) ** 2).mean(0)
      0.5 * (v + m**2 - 1 - v.log()).sum() + 0.5 * (lv.exp() - 1 - lv).sum()

- ``eager``: mixelbo's eager reference path (``fused=False``, autograd through its formulas);
- ``compiled``: ``torch.compile`` of that reference path (static shapes per size);
- ``default``: what ``MixtureKL``/``IndividualVarianceKL`` run with no setting (``fused=None``:
  the closed-form gradient with eager kernels on CPU, fused Inductor kernels on CUDA);
- ``fused``: the fused Inductor kernels (``fused=True``; on CPU what ``MIXELBO_COMPILE=1`` gives).

All five compute the same value (checked before timing). The methods are timed interleaved:
round after round, each method runs a block of steps, so a change in the machine's load hits
every method alike; the per-step median (and IQR, minimum) over rounds is reported, after a
warm-up (compilation included) that is reported separately. On CUDA, steps end with
``torch.cuda.synchronize()`` and each row also counts kernel launches (forward, backward) with
``torch.profiler`` and the bandwidth achieved against the device's peak.

The first call is measured in fresh subprocesses, as a new user meets it: import, then the first
forward + backward of ``MixtureKL()(mu, logvar, z) + 0.5 * IndividualVarianceKL()(logvar)`` at
(64, 512), for the default setting and for the fused kernels with an empty compiler cache
(``MIXELBO_COMPILE=1``, ``TORCHINDUCTOR_CACHE_DIR`` a new empty folder).

Usage::

    python benchmarks/bench_losses.py --threads 2 --dtypes fp32   # CPU grid, 2 threads
    python benchmarks/bench_losses.py --quick                     # one size, fp32 (CI)
    python benchmarks/bench_losses.py --device cuda               # GPU
    python benchmarks/bench_losses.py --render results/X.json     # the docs' tables from X

Results go to ``benchmarks/results/bench_losses-<device>[-quick]-<timestamp>.json`` with a
machine description (and the load average before and after). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mixelbo import functional as F

SIZES = [(64, 512), (256, 512), (32, 16 * 32 * 32), (512, 4096)]
QUICK_SIZES = [(64, 512)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("plain", "eager", "compiled", "default", "fused")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIRST_CALL_SIZE = (64, 512)
# The fewest (b, d) tensors one forward + backward must move through memory, each pass reading
# its inputs once and each gradient written once. "sample": the forward reads mu, z (KL_G) and
# logvar (KL_I); the backward reads z (mu's gradient is one row, broadcast) and logvar and
# writes three gradients. "means" and "mixture": the forward reads mu and logvar, the backward
# reads them again and writes their two gradients (z gets none).
MIN_TENSORS_MOVED = {"sample": 8, "means": 6, "mixture": 6}
MIXELBO_METHODS = {"eager": False, "default": None, "fused": True}  # method -> fused argument

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
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["peak_bandwidth_bytes_per_s"], info["peak_bandwidth_source"] = peak_bandwidth()
    return info


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


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


def plain_expression(variance: str) -> Callable[..., torch.Tensor]:
    """The few lines a user would write for KL_G (eqs. 17-19, the chosen estimator) + KL_I."""

    def plain(mu: torch.Tensor, lv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        m = mu.mean(0)
        if variance == "sample":
            v = ((z - m) ** 2).mean(0)
        elif variance == "means":
            v = ((mu - m) ** 2).mean(0)
        else:
            v = lv.exp().mean(0) + ((mu - m) ** 2).mean(0)
        return 0.5 * (v + m**2 - 1 - v.log()).sum() + 0.5 * (lv.exp() - 1 - lv).sum()

    return plain


def mixelbo_expression(variance: str, fused: bool | None) -> Callable[..., torch.Tensor]:
    def loss(mu: torch.Tensor, lv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        kl_g = F.mixture_kl(mu, lv, z, variance=variance, fused=fused)  # type: ignore[arg-type]
        return kl_g + 0.5 * F.individual_variance_kl(lv, reduction="sum", fused=fused)

    return loss


def loss_function(method: str, variance: str) -> Callable[..., torch.Tensor]:
    if method == "plain":
        return plain_expression(variance)
    if method == "compiled":
        return torch.compile(mixelbo_expression(variance, False), dynamic=False)  # type: ignore[return-value]
    return mixelbo_expression(variance, MIXELBO_METHODS[method])


class Step:
    """One forward + backward of a method's loss into the leaves (grads reset each step)."""

    def __init__(self, loss: Callable[..., torch.Tensor], leaves: list[torch.Tensor]) -> None:
        self.loss, self.leaves = loss, leaves

    def __call__(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None
        self.loss(*self.leaves).backward()

    def forward(self) -> torch.Tensor:
        return self.loss(*self.leaves)


def time_interleaved(
    steps: dict[str, Step], device: str, min_run_time: float, clock: Callable[[], float]
) -> dict[str, dict[str, float]]:
    """Median, IQR and minimum per step of every method (and the per-round times), over
    rounds that run each method's block of steps one after the other, the order rotated by
    one method each round so that no method always follows the same one; and the process's
    minor page faults and system CPU time per step during each method's blocks (on CUDA these
    count the host only)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    number = {}
    for name, step in steps.items():  # a block of about 10 ms per method
        elapsed = []
        for _ in range(5):  # the fastest of five, so one slow step does not set a 1-step block
            sync()
            start = time.perf_counter()
            step()
            sync()
            elapsed.append(time.perf_counter() - start)
        number[name] = max(1, int(0.01 / max(min(elapsed), 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    faults = dict.fromkeys(steps, 0)
    system_s = dict.fromkeys(steps, 0.0)
    started = time.perf_counter()
    rounds = 0
    names = list(steps)
    while rounds < 7 or time.perf_counter() - started < min_run_time * len(steps):
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            step = steps[name]
            sync()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = clock()
            for _ in range(number[name]):
                step()
            sync()
            times[name].append((clock() - start) / number[name])
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[name] += after.ru_minflt - usage.ru_minflt
            system_s[name] += after.ru_stime - usage.ru_stime
        rounds += 1
    stats = {}
    for name, samples in times.items():
        quartiles = statistics.quantiles(samples, n=4)
        stats[name] = {
            "median_us": statistics.median(samples) * 1e6,
            "iqr_us": (quartiles[2] - quartiles[0]) * 1e6,
            "min_us": min(samples) * 1e6,
            "rounds": len(samples),
            "number_per_round": number[name],
            "minor_faults_per_step": faults[name] / (len(samples) * number[name]),
            "system_us_per_step": system_s[name] / (len(samples) * number[name]) * 1e6,
            "round_us": [sample * 1e6 for sample in samples],
        }
    return stats


def cuda_launches(call: Callable[[], object]) -> int:
    """CUDA device activities (kernels, memsets, copies) of one call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sum(1 for event in prof.events() if event.device_type == cuda)


FIRST_CALL_SCRIPT = """
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads({threads})
import mixelbo
from mixelbo import IndividualVarianceKL, MixtureKL
imported = time.perf_counter()
device = {device!r}
mu, logvar, z = (torch.randn({b}, {d}, device=device, requires_grad=True) for _ in range(3))
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync()
start = time.perf_counter()
(MixtureKL()(mu, logvar, z) + 0.5 * IndividualVarianceKL()(logvar)).backward()
sync()
first = time.perf_counter() - start
start = time.perf_counter()
(MixtureKL()(mu, logvar, z) + 0.5 * IndividualVarianceKL()(logvar)).backward()
sync()
second = time.perf_counter() - start
print(json.dumps({{"import_s": imported - started, "first_call_s": first,
                  "second_call_s": second,
                  "inductor_loaded": "torch._inductor" in sys.modules}}))
"""


def first_call(device: str, threads: int, compile_setting: str | None) -> dict[str, Any]:
    """The first forward + backward in a fresh process (compile_setting: ``MIXELBO_COMPILE``,
    ``None`` leaves it unset); with the fused kernels the compiler cache starts empty."""
    env = {k: v for k, v in os.environ.items() if k != "MIXELBO_COMPILE"}
    with tempfile.TemporaryDirectory(prefix="mixelbo-inductor-cache-") as cache:
        if compile_setting is not None:
            env["MIXELBO_COMPILE"] = compile_setting
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # empty: a cold compile wherever one happens
        b, d = FIRST_CALL_SIZE
        script = FIRST_CALL_SCRIPT.format(threads=threads, device=device, b=b, d=d)
        completed = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env,
            timeout=1200, check=False,
        )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"first-call subprocess failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return {
        "device": device, "MIXELBO_COMPILE": compile_setting, "b": b, "d": d,
        "threads": threads, "compiler_cache": "empty", **result,
    }  # fmt: skip


def check_values(
    steps: dict[str, Step], dtype: torch.dtype, variance: str, leaves: list[torch.Tensor]
) -> dict[str, float]:
    """Every method computes the plain expression's value (the benchmark compares like with
    like); float32 round-off, or bf16 inputs' upcast, separate them. Returns each method's
    relative error against the plain expression in float64 on the same (rounded) inputs."""
    with torch.no_grad():
        values = {name: step.forward().double() for name, step in steps.items()}
        exact = plain_expression(variance)(*(leaf.double() for leaf in leaves))
    reference = values["plain"]
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for name, value in values.items():
        if not torch.allclose(value, reference, rtol=tol, atol=tol):
            raise AssertionError(f"{name} gives {value.item()}, plain gives {reference.item()}")
    return {name: abs(value.item() / exact.item() - 1.0) for name, value in values.items()}


def devices_of(choice: str) -> list[str]:
    """The devices that ``--device`` names (``all``: the CPU, and CUDA when present)."""
    if choice != "all":
        return [choice]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def run(
    args: argparse.Namespace,
    on_case: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None],
) -> dict[str, Any]:
    """The first calls, then every case's rows; ``on_case`` gets the first calls and the rows
    so far after each case (the caller saves them, so an interrupted run keeps them)."""
    torch._dynamo.config.cache_size_limit = 64  # static-shape baseline: one graph per case
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    dtypes = ["fp32"] if args.quick else args.dtypes
    devices = devices_of(args.device)
    clock = time.process_time if args.timer == "process" else time.perf_counter
    first_calls = []  # fresh processes, run first so that an interrupted run has them
    for device in devices:
        settings: list[str | None] = [None] if args.quick else [None, "1"]
        for setting in settings:
            first_calls.append(first_call(device, torch.get_num_threads(), setting))
            print_first_call(first_calls[-1])
    rows: list[dict[str, Any]] = []
    for device in devices:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for b, d in sizes:
                generator = torch.Generator().manual_seed(0)
                base = [torch.randn(b, d, generator=generator) for _ in range(3)]
                base[1] = 0.5 * base[1] - 0.5  # log-variances
                leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in base]
                steps = {m: Step(loss_function(m, args.variance), leaves) for m in METHODS}
                warmup = {}
                for method, step in steps.items():
                    start = time.perf_counter()
                    for _ in range(3):  # compile (where any) and warm up; not timed below
                        step()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    warmup[method] = time.perf_counter() - start
                errors = check_values(steps, dtype, args.variance, leaves)
                timings = time_interleaved(steps, device, args.min_run_time, clock)
                for method, step in steps.items():
                    row: dict[str, Any] = {
                        "device": device, "dtype": dtype_name, "b": b, "d": d,
                        "method": method, "warmup_s": warmup[method], **timings[method],
                        "relative_error": errors[method],
                    }  # fmt: skip
                    if device == "cuda":
                        row |= cuda_row(
                            step, row["median_us"], b * d * leaves[0].element_size(),
                            args.variance, method,
                        )  # fmt: skip
                    rows.append(row)
                    print_row(row)
                on_case(first_calls, rows)
    return {"rows": rows, "first_call": first_calls, "machine": machine_description(devices[-1])}


def term_launches(variance: str, fused: bool | None, leaves: list[torch.Tensor]) -> tuple[int, int]:
    """CUDA launches of mixelbo's two terms alone, forward and backward: without the
    ``kl_g + 0.5 * kl_i`` that joins them in the timed step, the backward started from
    gradients made beforehand (the grads of the leaves reset, so none is accumulated)."""
    mu, lv, z = leaves

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        kl_g = F.mixture_kl(mu, lv, z, variance=variance, fused=fused)  # type: ignore[arg-type]
        return kl_g, F.individual_variance_kl(lv, reduction="sum", fused=fused)

    forward_launches = cuda_launches(forward)
    for leaf in leaves:
        leaf.grad = None
    outputs = forward()
    seeds = [torch.ones_like(out) for out in outputs]
    backward_launches = cuda_launches(lambda: torch.autograd.backward(outputs, seeds))
    return forward_launches, backward_launches


def cuda_row(
    step: Step, median_us: float, tensor_bytes: int, variance: str, method: str
) -> dict[str, Any]:
    """Launches per step (forward, backward; and of mixelbo's terms alone) and bandwidth
    against the device's peak."""
    launches = cuda_launches(step)
    forward = cuda_launches(step.forward)
    moved = MIN_TENSORS_MOVED[variance] * tensor_bytes
    achieved = moved / (median_us * 1e-6)
    peak, _ = peak_bandwidth()
    row: dict[str, Any] = {
        "kernel_launches_per_step": launches,
        "kernel_launches_forward": forward,
        "kernel_launches_backward": launches - forward,
        "bytes_moved_min": moved,
        "achieved_gb_per_s": achieved / 1e9,
        "fraction_of_peak_bandwidth": achieved / peak if peak else None,
    }
    if method in MIXELBO_METHODS:
        fwd, bwd = term_launches(variance, MIXELBO_METHODS[method], step.leaves)
        row |= {"term_launches_forward": fwd, "term_launches_backward": bwd}
    return row


def print_row(row: dict[str, Any]) -> None:
    extra = ""
    if "kernel_launches_per_step" in row:
        peak = row["fraction_of_peak_bandwidth"]
        terms = row.get("term_launches_forward"), row.get("term_launches_backward")
        extra = (
            f"  launches {row['kernel_launches_forward']:3d} fwd"
            f" {row['kernel_launches_backward']:3d} bwd"
            + (f" (terms alone {terms[0]} + {terms[1]})" if terms[0] is not None else "")
            + f"  {row['achieved_gb_per_s']:8.1f} GB/s"
            + (f" ({100 * peak:4.1f}% of peak)" if peak else "")
        )
    print(
        f"{row['device']:4s} {row['dtype']:4s} {row['b']:5d} x {row['d']:6d}  {row['method']:8s}"
        f"  median {row['median_us']:10.1f} us  (IQR {row['iqr_us']:8.1f}, min"
        f" {row['min_us']:10.1f})  warm-up {row['warmup_s']:6.2f} s"
        f"  faults/step {row['minor_faults_per_step']:6.0f},"
        f" system {row['system_us_per_step']:6.0f} us"
        f"{extra}",
        flush=True,
    )


def print_first_call(entry: dict[str, Any]) -> None:
    setting = entry["MIXELBO_COMPILE"]
    label = "default" if setting is None else f"MIXELBO_COMPILE={setting}"
    print(
        f"first call, fresh process, {entry['device']} {label:17s}: {entry['first_call_s']:8.3f} s"
        f" (import {entry['import_s']:.2f} s, second call {entry['second_call_s'] * 1e3:.1f} ms,"
        f" Inductor loaded: {entry['inductor_loaded']})",
        flush=True,
    )


def _paired_ratio(slow: dict[str, Any], fast: dict[str, Any]) -> float:
    """Median over rounds of ``slow``'s time over ``fast``'s in the same round (their blocks
    ran back to back)."""
    pairs = zip(slow["round_us"], fast["round_us"], strict=True)
    return statistics.median(a / b for a, b in pairs)


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case, each speed-up as :func:`_paired_ratio`: a change in the machine's speed
    between rounds cancels out."""
    table = []
    keys = dict.fromkeys((r["device"], r["dtype"], r["b"], r["d"]) for r in rows)  # run order
    for key in keys:
        case = {r["method"]: r for r in rows if (r["device"], r["dtype"], r["b"], r["d"]) == key}
        table.append({
            "device": key[0], "dtype": key[1], "b": key[2], "d": key[3],
            "default_vs_plain": _paired_ratio(case["plain"], case["default"]),
            "fused_vs_plain": _paired_ratio(case["plain"], case["fused"]),
            "fused_vs_eager": _paired_ratio(case["eager"], case["fused"]),
            "fused_vs_compiled": _paired_ratio(case["compiled"], case["fused"]),
        })  # fmt: skip
    return table


def _error_pair(plain: float | None, default: float | None) -> str:
    """Relative errors against float64 (absent in results recorded before they were)."""
    if plain is None or default is None:
        return "not recorded"
    return f"{plain:.1e} / {default:.1e}"


def render_markdown(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md from a results JSON (``--render``)."""
    lines = [
        "| device | dtype | (b, d) | plain (µs) | eager (µs) | torch.compile (µs) "
        "| default (µs) | fused (µs) | default vs plain | fused vs plain "
        "| loss error: plain / default |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = {(r["device"], r["dtype"], r["b"], r["d"], r["method"]): r for r in result["rows"]}
    for s in result["speedups"]:
        key = (s["device"], s["dtype"], s["b"], s["d"])
        times = " | ".join(f"{rows[(*key, m)]['median_us']:.0f}" for m in METHODS)
        errors = (rows[(*key, m)].get("relative_error") for m in ("plain", "default"))
        lines.append(
            f"| {key[0]} | {key[1]} | ({key[2]}, {key[3]}) | {times} "
            f"| {s['default_vs_plain']:.2f}x | {s['fused_vs_plain']:.2f}x "
            f"| {_error_pair(*errors)} |"
        )
    if all("minor_faults_per_step" in r for r in result["rows"]):  # results since 2026-12-02
        shown = ("plain", "default", "fused")
        lines += [
            "",
            "| device | dtype | (b, d) | minor page faults per step: plain / default / fused "
            "| system CPU time per step (µs): plain / default / fused |",
            "|---|---|---|---:|---:|",
        ]
        for s in result["speedups"]:
            key = (s["device"], s["dtype"], s["b"], s["d"])
            faults = " / ".join(f"{rows[(*key, m)]['minor_faults_per_step']:.0f}" for m in shown)
            system = " / ".join(f"{rows[(*key, m)]['system_us_per_step']:.0f}" for m in shown)
            lines.append(f"| {key[0]} | {key[1]} | ({key[2]}, {key[3]}) | {faults} | {system} |")
    lines += [
        "",
        "| device | setting | import (s) | first forward + backward (s) | second (ms) |",
        "|---|---|---:|---:|---:|",
    ]
    for entry in result["first_call"]:
        setting = entry["MIXELBO_COMPILE"]
        label = "default" if setting is None else f"`MIXELBO_COMPILE={setting}`, empty cache"
        lines.append(
            f"| {entry['device']} | {label} | {entry['import_s']:.2f} "
            f"| {entry['first_call_s']:.3f} | {entry['second_call_s'] * 1e3:.1f} |"
        )
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    """``B,D`` as ``(B, D)``, both >= 2 (the moments need two samples)."""
    try:
        b, d = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,D (two integers); got {text!r}") from None
    if b < 2 or d < 1:
        raise argparse.ArgumentTypeError(f"expected B >= 2 and D >= 1; got {text!r}")
    return b, d


def write_json(path: Path, result: dict[str, Any]) -> None:
    """``result`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one size, fp32, short runs (CI)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    parser.add_argument(
        "--sizes", nargs="+", type=_size, default=None, metavar="B,D",
        help=f"(batch, dims) cases (default: {' '.join(f'{b},{d}' for b, d in SIZES)})",
    )  # fmt: skip
    parser.add_argument("--variance", choices=F.VARIANCES, default="sample")
    parser.add_argument(
        "--min-run-time", type=float, default=None, help="seconds per method and case"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--timer", choices=("wall", "process"), default="wall",
        help="CPU only: 'process' times CPU time of this process (use on a shared machine "
        "with --threads 1; with more threads it sums over threads)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument(
        "--render", type=Path, default=None, metavar="JSON",
        help="print the Markdown tables of docs/benchmarks.md from a results file and exit",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    if args.min_run_time is None:
        args.min_run_time = 0.2 if args.quick else 2.0
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    load_before = load_average()
    settings = {
        "quick": args.quick, "variance": args.variance, "min_run_time_s": args.min_run_time,
        "timer": args.timer,
        "loss": "mixture_kl(mu, logvar, z) + 0.5 * individual_variance_kl(logvar, 'sum')",
        "timed": "forward + backward into mu, logvar, z (grads reset each step), methods "
        "interleaved round by round",
        "command": " ".join(sys.argv),
        # glibc's allocator settings, which decide whether freed tensors' pages return to
        # the kernel (and fault in again), and torch's switch for transparent huge pages
        # (one fault per 2 MiB): see benchmarks/README.md
        "allocator_env": {
            k: v for k, v in os.environ.items()
            if k.startswith("MALLOC_") or k == "THP_MEM_ALLOC_ENABLE"
        },
    }  # fmt: skip
    label = f"bench_losses-{devices_of(args.device)[-1]}{'-quick' if args.quick else ''}"
    # the finished cases while the run goes on, so an interrupted run keeps them
    partial = (args.out or RESULTS_DIR / label).with_suffix(".partial.json")
    result = run(
        args,
        lambda first_calls, rows: write_json(
            partial,
            {"partial": True, "first_call": first_calls, "rows": rows, "settings": settings},
        ),
    )
    result["speedups"] = speedups(result["rows"])
    result["machine"]["load_average_before"] = load_before
    result["machine"]["load_average_after"] = load_average()
    result["settings"] = settings | {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_s": time.perf_counter() - started,
    }
    print(
        "\nspeed-up (median over rounds of the same-round time ratio) against the plain "
        "expression, and of the fused path:"
    )
    for s in result["speedups"]:
        print(
            f"  {s['device']:4s} {s['dtype']:4s} {s['b']:5d} x {s['d']:6d}"
            f"  default vs plain {s['default_vs_plain']:5.2f}x"
            f"  fused vs plain {s['fused_vs_plain']:5.2f}x"
            f"  fused vs eager {s['fused_vs_eager']:5.2f}x"
            f"  fused vs torch.compile {s['fused_vs_compiled']:5.2f}x"
        )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"{label}-{stamp}.json"  # named by the time it finished
    write_json(out, result)
    partial.unlink(missing_ok=True)
    print(f"\nwrote {out} ({result['settings']['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
