"""The loss benchmark runs end to end in its quick mode (what CI runs; not a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_losses_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--quick",
         "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "speed-up of the fused path" in completed.stdout
    result = json.loads(out.read_text())
    methods = {row["method"] for row in result["rows"]}
    assert methods == {"eager", "compiled", "fused"}
    for row in result["rows"]:
        assert row["device"] == "cpu" and (row["b"], row["d"]) == (64, 512)
        assert row["median_us"] > 0 and row["runs"] >= 1 and row["warmup_s"] > 0
    machine = result["machine"]
    assert machine["cpu_count"] and machine["torch"] == __import__("torch").__version__
    assert machine["cpu_model"]
    (speedup,) = result["speedups"]
    assert speedup["fused_vs_eager"] > 0 and speedup["fused_vs_compiled"] > 0
    assert result["settings"]["quick"] is True
