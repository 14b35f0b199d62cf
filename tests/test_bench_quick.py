"""The loss benchmark runs end to end in its quick mode (what CI runs; not a timed test)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_losses_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--quick",
         "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "against the plain expression" in completed.stdout
    assert not (tmp_path / "bench.partial.json").exists()  # the finished run's is removed
    result = json.loads(out.read_text())
    methods = {row["method"] for row in result["rows"]}
    assert methods == {"plain", "eager", "compiled", "default", "fused"}
    for row in result["rows"]:
        assert row["device"] == "cpu" and (row["b"], row["d"]) == (64, 512)
        assert 0 < row["min_us"] <= row["median_us"] and row["rounds"] >= 7
        assert row["warmup_s"] > 0
        assert 0 <= row["relative_error"] < 1e-4  # fp32 against float64 on the same inputs
        assert row["minor_faults_per_step"] >= 0 and row["system_us_per_step"] >= 0
    machine = result["machine"]
    assert machine["cpu_count"] and machine["torch"] == __import__("torch").__version__
    assert machine["cpu_model"] and machine["load_average_before"] is not None
    (speedup,) = result["speedups"]
    assert all(speedup[key] > 0 for key in ("default_vs_plain", "fused_vs_plain"))
    (first,) = result["first_call"]  # the default CPU path, in a fresh process
    assert first["MIXELBO_COMPILE"] is None and first["first_call_s"] > 0
    assert first["inductor_loaded"] is False
    assert result["settings"]["quick"] is True
    render = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--render", str(out)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "| cpu | fp32 | (64, 512) |" in render.stdout and "page faults" in render.stdout


def test_an_interrupted_run_keeps_its_finished_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench_losses.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    checked, cases_begun = bench.check_values, []

    def interrupted_in_the_second_case(*args: object) -> object:
        cases_begun.append(args)
        if len(cases_begun) == 2:
            raise KeyboardInterrupt
        return checked(*args)

    monkeypatch.setattr(bench, "check_values", interrupted_in_the_second_case)
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--quick", "--device", "cpu", "--sizes", "4,8", "6,3", "--min-run-time",
                    "0.01", "--out", str(out)])  # fmt: skip
    assert not out.exists()
    partial = json.loads((tmp_path / "bench.partial.json").read_text())
    assert partial["partial"] is True and partial["settings"]["quick"] is True
    (first,) = partial["first_call"]  # measured before the cases
    assert first["first_call_s"] > 0
    cases = [(row["b"], row["d"], row["method"]) for row in partial["rows"]]
    assert cases == [(4, 8, method) for method in bench.METHODS]  # the finished case only


def test_bench_losses_rejects_a_bad_size() -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--sizes", "1,4"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "expected B >= 2 and D >= 1; got '1,4'" in completed.stderr


def test_bench_full_covariance_quick(tmp_path: Path) -> None:
    out = tmp_path / "full.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_full_covariance.py"), "--quick",
         "--cases", "64,8,mixture", "40,8,means", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "vs plain" in completed.stdout
    assert not (tmp_path / "full.partial.json").exists()
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {row["method"] for row in rows} == {"plain", "reference", "default", "diagonal"}
    assert {(row["n"], row["d"], row["variance"]) for row in rows} == {
        (64, 8, "mixture"),
        (40, 8, "means"),
    }
    for row in rows:
        assert 0 < row["cpu_min_ms"] <= row["cpu_median_ms"] and row["rounds"] >= 3
        if row["method"] != "diagonal":
            assert 0 <= row["relative_error"] < 1e-5  # fp32 against float64 on the same inputs
    assert result["machine"]["torch_threads"] == 1 and result["settings"]["quick"] is True
