"""mixelbo-study: end to end on the smoke budget, resumption, selection on validation."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest

from mixelbo import RegularizedELBO
from mixelbo_reference import compare, study
from mixelbo_reference.study import FAMILIES, _best, _summary, main, sweep_points
from mixelbo_reference.train import NonFiniteLossError


def test_study_runs_end_to_end_and_skips_finished_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = study.study(
        tmp_path, budget="smoke", datasets=["procedural"], families=["wae-mmd"], progress=False
    )
    result = summary["datasets"]["procedural"]
    labels = [(p["label"], p["gan"]) for p in result["points"]]
    chosen = result["chosen"]["wae-mmd"]
    assert labels == [
        ("wae-mmd-10", False),
        ("wae-mmd-100", False),
        ("wae-mmd-1000", False),
        (chosen, True),
    ]
    # chosen on validation: the lowest validation FID of the GAN-free points
    fids = {p["label"]: p["validation_fid"][0] for p in result["points"] if not p["gan"]}
    assert fids[chosen] == min(fids.values())
    scores = sorted(p.name for p in (tmp_path / "procedural" / "scores").glob("*.json"))
    assert scores == sorted(
        [f"wae-mmd-{w}-s0.json" for w in (10, 100, 1000)] + [f"{chosen}-gan-s0.json"]
    )
    run = json.loads((tmp_path / "procedural" / "scores" / "wae-mmd-10-s0.json").read_text())
    for split, images in (("validation", 10), ("test", 24)):
        assert run[split]["images"] == images  # 10% of the 96 training images; capped test
        assert math.isfinite(run[split]["prior"]["fid"]) and run[split]["l1"] > 0
    markdown = (tmp_path / "study.md").read_text()
    assert "![procedural: test L1 vs prior-sample FID](procedural_frontier.png)" in markdown
    assert "| family | point | GAN | seeds | val. FID | test L1 | test FID |" in markdown
    for weight in (10, 100, 1000):  # each point's row; the chosen one is marked
        label = f"wae-mmd-{weight}" + (" (chosen)" if chosen == f"wae-mmd-{weight}" else "")
        assert f"| wae-mmd | {label} | no | 1 |" in markdown
    assert "(procedural_precision_recall.png)" in markdown
    assert "(procedural_samples.png)" in markdown
    assert (tmp_path / "procedural_frontier.png").stat().st_size > 1000
    assert "data:image/png;base64," in (tmp_path / "study.html").read_text()

    # a second call trains and scores nothing and keeps the total wall time
    def refuse(config):
        raise AssertionError(f"trained {config.run_dir} again")

    monkeypatch.setattr(compare, "train_once", refuse)
    monkeypatch.setattr(study._Scorer, "__init__", refuse)
    again = study.study(
        tmp_path, budget="smoke", datasets=["procedural"], families=["wae-mmd"], progress=False
    )
    assert again["train_seconds_this_call"] == again["score_seconds_this_call"] == 0
    assert again["seconds_total"] >= summary["seconds_total"]
    assert again["datasets"]["procedural"]["points"] == result["points"]
    with pytest.raises(ValueError, match=r"holds a study of budget 'smoke' .*got budget 'large'"):
        study.study(tmp_path, budget="large", datasets=["procedural"], progress=False)
    # the same budget name with another plan (a budget whose settings changed) is refused too
    smoke = study.BUDGETS["smoke"]
    monkeypatch.setitem(study.BUDGETS, "smoke", dataclasses.replace(smoke, steps=3))
    with pytest.raises(ValueError, match=r"'smoke' with plan .*'steps': 2.*'steps': 3"):
        study.study(tmp_path, budget="smoke", datasets=["procedural"], progress=False)


def _score(fid: float, l1: float, active: int) -> dict:
    prior = {"fid": fid, "kid_mean": 0.0, "precision": 0.5, "recall": 0.5}
    return {
        "images": 10,
        "l1": l1,
        "prior": prior,
        "reconstruction_fid": fid,
        "active_units": active,
        "latent_dim": 16,
        "collapsed": active < 8,
    }


def test_summary_and_selection_use_the_validation_split() -> None:
    points = {p.label: p for p in sweep_points()}
    # beta-vae-0.1: best on test, worse on validation; vae: the other way round
    low_test = _summary(
        points["beta-vae-0.1"],
        [{"validation": _score(30, 0.1, 16), "test": _score(1, 0.1, 16)}] * 2,
    )
    low_validation = _summary(
        points["vae"],
        [
            {"validation": _score(10, 0.2, 4), "test": _score(50, 0.2, 4)},
            {"validation": _score(20, 0.4, 12), "test": _score(70, 0.4, 12)},
        ],
    )
    assert low_validation["validation_fid"] == (15.0, pytest.approx(math.sqrt(50)))
    assert low_validation["test_l1"] == (pytest.approx(0.3), pytest.approx(math.sqrt(0.02)))
    assert low_validation["collapse_rate"] == 0.5  # one of two seeds below 8 of 16 units
    assert _best([low_test, low_validation], "beta-vae")["label"] == "vae"


def test_a_diverged_run_is_recorded_as_failed_and_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def diverge(config):
        raise NonFiniteLossError("non-finite loss at step 3: kl")

    monkeypatch.setattr(compare, "train_once", diverge)
    timing = {"train_seconds": 0.0, "score_seconds": 0.0}
    point = sweep_points()[0]
    config = study._config("procedural", study.BUDGETS["smoke"], point, 0, tmp_path / "run")
    record = study._train_and_score(config, study.BUDGETS["smoke"], "x", [], timing, False)
    assert record == {"run": "x", "seed": 0, "failed": "non-finite loss at step 3: kl"}
    assert timing["train_seconds"] > 0 and timing["score_seconds"] == 0
    summary = _summary(
        point, [record, {"validation": _score(10, 0.2, 4), "test": _score(9, 0.1, 12)}]
    )
    assert (summary["seeds"], summary["failed"]) == (2, 1)
    assert summary["test_fid"] == (9.0, 0.0) and summary["collapse_rate"] == 0.0
    all_failed = _summary(point, [record])
    assert math.isnan(all_failed["validation_fid"][0]) and math.isnan(all_failed["collapse_rate"])
    assert _best([all_failed, summary | {"label": "other"}], point.family)["label"] == "other"


def test_sweep_covers_the_issue(tmp_path: Path) -> None:
    points = sweep_points()
    assert [p.family for p in points].count("beta-vae") == 5
    assert {p.label for p in points} >= {
        "beta-vae-0.1",
        "vae",
        "beta-vae-10",
        "paper",
        "authors-code",
        "mixture-sample",
        "mixture-mixture",
        "wae-mmd-10",
        "wae-mmd-1000",
    }
    assert {p.family for p in points} == set(FAMILIES)
    assert not any(p.gan for p in points)
    # the "means" estimator: authors-code is the recommended objective with it
    authors_code = repr(RegularizedELBO.authors_code())
    assert authors_code == repr(RegularizedELBO(variance="means")) != repr(RegularizedELBO())
    for point in [*points, *(p.with_gan() for p in points)]:  # every run is a valid config
        for dataset in ("mnist", "procedural"):
            config = study._config(dataset, study.BUDGETS["default"], point, 1, tmp_path)
            assert config.gan == point.gan and config.seed == 1
            assert config.holdout == (500 if dataset == "mnist" else 200)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"budget": "huge"}, r"budget must be one of .*'smoke'\]; got 'huge'"),
        ({"datasets": ["celeba"]}, r"datasets must be .*got \['celeba'\]"),
        ({"datasets": []}, r"datasets must be"),
        ({"families": ["vae"]}, r"families must be .*got \['vae'\]"),
    ],
)
def test_study_rejects_bad_arguments(tmp_path: Path, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        study.study(tmp_path, **options)


def test_cli_rejects_bad_threads(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads must be >= 1; got 0" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1; got 0" in capsys.readouterr().err


def test_cli_jobs_train_the_datasets_in_parallel_workers(tmp_path: Path) -> None:
    """``--jobs 2``: one worker process per dataset, then one report over both."""
    out = tmp_path / "study"
    argv = ["--out", str(out), "--budget", "smoke", "--families", "wae-mmd", "--no-progress"]
    started = time.perf_counter()
    assert main([*argv, "--jobs", "2", "--threads", "2"]) == 0
    wall = time.perf_counter() - started
    summary = json.loads((out / "study.json").read_text())
    assert set(summary["datasets"]) == {"mnist", "procedural"}
    assert (summary["jobs"], summary["threads"]) == (2, 1)
    for dataset in ("mnist", "procedural"):  # each trained by its own worker, logged apart
        assert "world size 1" in (out / f"{dataset}.log").read_text()
        assert len(list((out / dataset / "scores").glob("*.json"))) == 4  # 3 points + 1 GAN
    # the merging call trained nothing itself; the workers' wall time counts in the total
    assert summary["train_seconds_this_call"] == 0
    assert 0.5 * wall <= summary["seconds_total"] <= wall + 0.05  # rounded to 0.1 s
    (out / "budget.json").write_text('{"budget": "smoke", "plan": {}}')
    assert main([*argv, "--jobs", "2"]) == 2  # the parent refuses the folder before any worker


def test_cli_jobs_report_a_failed_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that exits with an error stops the command, naming the worker's log."""
    monkeypatch.setattr(study.sys, "executable", "false")  # every worker exits 1 at once
    argv = ["--out", str(tmp_path), "--budget", "smoke", "--no-progress", "--jobs", "2"]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "worker failed (exit 1); see" in error and ".log" in error
    assert not (tmp_path / "study.json").exists()
