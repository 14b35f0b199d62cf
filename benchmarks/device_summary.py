"""The GPU targets of issue 12 against what one ``benchmarks/device_check.sh`` run measured.

Reads the run's folder (``bench_losses.json``, or the ``.partial.json`` of an interrupted run;
``train-eager.json``, ``train-compile.json``; the pytest line of ``device_check.log``) and
prints one line per target with the measured value, "met" or "not met", or "not measured"
where the run has no such figure (no CUDA rows, a step that failed or ran out of time).

    python benchmarks/device_summary.py benchmarks/results/device-<time>
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

# issue 12, item 6
MAX_LAUNCHES = 2  # forward, and backward, of KL_G + KL_I
MIN_PEAK_FRACTION = 0.8  # of HBM bandwidth, at >= 2 M elements
MIN_ELEMENTS = 2 * 1024 * 1024
MIN_SPEEDUP = 5.0  # fused vs the plain expression at (64, 512), fp32
MIN_IMAGES_PER_S = 600.0  # paper-256, bf16, batch 64


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def loss_lines(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["bench_losses: no result (the step failed or ran out of time; see the log)"]
    rows = [r for r in result["rows"] if r["device"] == "cuda"]
    lines = [
        f"bench_losses: {len(result['rows'])} rows" + (" (partial)" if "partial" in result else "")
    ]
    for entry in result.get("first_call", []):
        setting = entry["MIXELBO_COMPILE"] or "unset"
        lines.append(
            f"  first call, fresh process, {entry['device']}, MIXELBO_COMPILE {setting}:"
            f" {entry['first_call_s']:.2f} s (empty compiler cache)"
        )
    if not rows:
        return [*lines, "CUDA targets: not measured (no CUDA rows)"]
    fused = [r for r in rows if r["method"] == "fused"]
    worst = max(max(r["term_launches_forward"], r["term_launches_backward"]) for r in fused)
    lines.append(
        f"target <= {MAX_LAUNCHES} launches forward and backward: at most {worst} per pass"
        f" over {len(fused)} cases: {_verdict(worst <= MAX_LAUNCHES)}"
    )
    large = [r for r in fused if r["b"] * r["d"] >= MIN_ELEMENTS]
    if not large:  # e.g. a run cut short before its large cases
        lines.append(
            f"target >= {MIN_PEAK_FRACTION:.0%} of peak bandwidth at >= 2 M elements: not measured"
        )
    for r in large:
        fraction = r["fraction_of_peak_bandwidth"]
        verdict = "unknown" if fraction is None else _verdict(fraction >= MIN_PEAK_FRACTION)
        value = "no peak" if fraction is None else f"{fraction:.0%}"
        lines.append(
            f"target >= {MIN_PEAK_FRACTION:.0%} of peak bandwidth,"
            f" {r['dtype']} ({r['b']}, {r['d']}): {value}: {verdict}"
        )
    speedup = [
        s
        for s in result.get("speedups", [])
        if s["device"] == "cuda" and s["dtype"] == "fp32" and (s["b"], s["d"]) == (64, 512)
    ]
    target = f"target >= {MIN_SPEEDUP:.0f}x the plain expression at (64, 512), fp32"
    if speedup:
        value = speedup[0]["fused_vs_plain"]
        lines.append(f"{target}: {value:.2f}x: {_verdict(value >= MIN_SPEEDUP)}")
    else:
        lines.append(f"{target}: not measured")
    return lines


def train_lines(results: dict[str, dict[str, Any] | None]) -> list[str]:
    lines = []
    measured = []
    for label, result in results.items():
        if result is None:
            lines.append(f"bench_train, {label}: no result (failed, out of time, or not run)")
            continue
        mfu = "" if result["mfu"] is None else f", MFU {result['mfu']:.1%}"
        lines.append(
            f"bench_train, {label}: {result['config']} on {result['device']},"
            f" {result['precision']}, batch {result['batch_size']}:"
            f" {result['images_per_s']:.1f} images/s{mfu},"
            f" KL_G + KL_I {result['loss_terms_fraction_of_step']:.2%} of a step"
        )
        if result["config"] == "paper-256" and result["precision"] == "bf16":
            measured.append(result["images_per_s"])
    if measured:
        best = max(measured)
        lines.append(
            f"target >= {MIN_IMAGES_PER_S:.0f} images/s, paper-256 bf16: {best:.0f}:"
            f" {_verdict(best >= MIN_IMAGES_PER_S)}"
        )
    else:
        lines.append(f"target >= {MIN_IMAGES_PER_S:.0f} images/s, paper-256 bf16: not measured")
    return lines


def pytest_line(log: Path) -> str:
    if not log.is_file():
        return "pytest -m cuda: no log"
    summaries = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|deselected|error).*?)\s*=*$",
                           log.read_text(), flags=re.MULTILINE)  # fmt: skip
    return f"pytest -m cuda: {summaries[0]}" if summaries else "pytest -m cuda: no summary line"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: device_summary.py RUN_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    losses = _load(folder / "bench_losses.json") or _load(folder / "bench_losses.partial.json")
    trains = {label: _load(folder / f"train-{label}.json") for label in ("eager", "compile")}
    lines = [pytest_line(folder / "device_check.log"), *loss_lines(losses), *train_lines(trains)]
    print("\n".join(["== summary", *lines]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
