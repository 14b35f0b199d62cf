"""The GPU check script (benchmarks/device_check.sh) and its summary, on the CPU: GPU time is
short, so the script must work on its first run there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_smoke_run_does_every_step_through_linked_packages(tmp_path: Path) -> None:
    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable, "LINK_PACKAGES": "1"}
    completed = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--smoke"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    names = {path.name for path in tmp_path.iterdir()}
    assert names == {"device_check.log", "bench_losses.json", "train-eager.json", "summary.txt"}
    log = (tmp_path / "device_check.log").read_text()
    assert "linked from this checkout" in log
    for step in ("pytest -m cuda", "bench_losses", "bench_train, eager"):
        assert f"== {step}: rc 0" in log, step
    summary = (tmp_path / "summary.txt").read_text()
    assert "pytest -m cuda: " in summary and " skipped" in summary  # no GPU: every CUDA test
    assert "CUDA targets: not measured (no CUDA rows)" in summary
    assert "target >= 600 images/s, paper-256 bf16: not measured" in summary
    assert json.loads((tmp_path / "bench_losses.json").read_text())["rows"]


def test_the_usage_is_checked() -> None:
    completed = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--fast"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 2 and "usage:" in completed.stderr


def _cuda_row(method: str, b: int, d: int, launches: int, fraction: float) -> dict[str, object]:
    return {
        "device": "cuda", "dtype": "fp32", "b": b, "d": d, "method": method,
        "median_us": 10.0, "term_launches_forward": launches, "term_launches_backward": 2,
        "achieved_gb_per_s": 1000.0, "fraction_of_peak_bandwidth": fraction,
    }  # fmt: skip


def test_the_summary_judges_each_cuda_target_by_the_issue_thresholds(tmp_path: Path) -> None:
    rows = [
        _cuda_row("fused", 64, 512, 2, 0.10),
        _cuda_row("fused", 512, 4096, 3, 0.85),  # >= 2 M elements, at 85%
        _cuda_row("fused", 16384, 4096, 2, 0.79),  # and at 79%: not met
    ]
    speedups = [
        {"device": "cuda", "dtype": "fp32", "b": 64, "d": 512, "fused_vs_plain": 4.9,
         "default_vs_plain": 4.9},
    ]  # fmt: skip
    (tmp_path / "bench_losses.partial.json").write_text(
        json.dumps({"partial": True, "rows": rows, "speedups": speedups})
    )
    train = {
        "config": "paper-256", "device": "NVIDIA H200", "precision": "bf16", "batch_size": 64,
        "images_per_s": 612.0, "mfu": 0.35, "loss_terms_fraction_of_step": 0.001,
    }  # fmt: skip
    (tmp_path / "train-compile.json").write_text(json.dumps(train))
    (tmp_path / "device_check.log").write_text("...\n29 passed, 190 deselected in 8.1s\n")
    summary = _module("device_summary")
    lines = summary.loss_lines(summary._load(tmp_path / "bench_losses.partial.json"))
    text = "\n".join(lines)
    assert "(partial)" in lines[0]
    assert "at most 3 per pass over 3 cases: NOT MET" in text
    assert "fp32 (64, 512): 10%" not in text  # below 2 M elements: not judged
    assert "fp32 (512, 4096): 85%: met" in text
    assert "fp32 (16384, 4096): 79%: NOT MET" in text
    assert "(64, 512), fp32: 4.90x: NOT MET" in text
    small_only = summary.loss_lines({"partial": True, "rows": rows[:1], "speedups": speedups})
    assert "of peak bandwidth at >= 2 M elements: not measured" in "\n".join(small_only)
    trains = {"eager": None, "compile": json.loads((tmp_path / "train-compile.json").read_text())}
    train_text = "\n".join(summary.train_lines(trains))
    assert "bench_train, eager: no result" in train_text
    assert "paper-256 bf16: 612: met" in train_text
    assert summary.pytest_line(tmp_path / "device_check.log").endswith(
        "29 passed, 190 deselected in 8.1s"
    )


def test_term_launches_runs_the_two_terms_forward_and_backward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The terms-only launch count profiles mixelbo's forward, then a backward from unit
    gradients into fresh leaves: the gradients are those of KL_G + KL_I (eqs. 19, 20; KL_I
    summed, unscaled) by autograd through the plain expression in float64."""
    bench = _module("bench_losses")
    calls: list[object] = []
    monkeypatch.setattr(bench, "cuda_launches", lambda call: calls.append(call()) or 1)
    generator = torch.Generator().manual_seed(1)
    base = [torch.randn(16, 8, generator=generator, dtype=torch.float64) for _ in range(3)]
    base[1] = 0.5 * base[1] - 0.5
    leaves = [t.float().requires_grad_() for t in base]
    leaves[0].grad = torch.full_like(leaves[0], 7.0)  # stale: must not be accumulated into
    assert bench.term_launches("sample", None, leaves) == (1, 1)
    assert len(calls) == 2
    exact = [t.clone().requires_grad_() for t in base]
    mu, lv, z = exact
    m = mu.mean(0)
    v = ((z - m) ** 2).mean(0)
    kl = 0.5 * (v + m**2 - 1 - v.log()).sum() + (lv.exp() - 1 - lv).sum()  # eq. 20 as summed
    kl.backward()
    for leaf, reference in zip(leaves, exact, strict=True):
        assert leaf.grad is not None and reference.grad is not None
        torch.testing.assert_close(leaf.grad.double(), reference.grad, rtol=1e-5, atol=1e-6)
