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
from mixelbo_reference.run_folder import RunLock
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
        ("wae-mmd-10000", False),
        (chosen, True),
    ]
    # chosen on validation: the lowest validation FID of the GAN-free points
    fids = {p["label"]: p["validation_fid"][0] for p in result["points"] if not p["gan"]}
    assert fids[chosen] == min(fids.values())
    scores = sorted(p.name for p in (tmp_path / "procedural" / "scores").glob("*.json"))
    assert scores == sorted(
        [f"wae-mmd-{w}-s0.json" for w in (10, 100, 1000, 10000)] + [f"{chosen}-gan-s0.json"]
    )
    run = json.loads((tmp_path / "procedural" / "scores" / "wae-mmd-10-s0.json").read_text())
    for split, images in (("validation", 10), ("test", 24)):
        assert run[split]["images"] == images  # 10% of the 96 training images; capped test
        assert math.isfinite(run[split]["prior"]["fid"]) and run[split]["l1"] > 0
        # N(0, I) and each ex-post sampler, scored side by side on the same images
        assert set(run[split]["samplers"]) == {"prior", "gaussian", "gmm"}
        assert run[split]["samplers"]["prior"] == run[split]["prior"]
        for scores in run[split]["samplers"].values():
            assert scores["images"] == images and math.isfinite(scores["fid"])
        assert run[split]["samplers"]["gmm"]["fid"] != run[split]["prior"]["fid"]
    markdown = (tmp_path / "study.md").read_text()
    assert "![procedural: test L1 against FID, per sampler](procedural_frontier.png)" in markdown
    header = (
        "| family | point | GAN | seeds | val. FID | test L1 | test FID prior | test FID gaussian"
    )
    assert header in markdown
    for weight in (10, 100, 1000, 10000):  # each point's row; the chosen one is marked
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
    # a study in progress: --report-only reports the scored runs and trains none
    (tmp_path / "procedural" / "scores" / "wae-mmd-100-s0.json").unlink()
    partial = study.study(
        tmp_path, budget="smoke", datasets=["procedural"], families=["wae-mmd"], progress=False,
        stage="report",
    )["datasets"]["procedural"]  # fmt: skip
    assert (partial["scored_runs"], partial["planned_runs"]) == (4, 5)
    assert "wae-mmd-100" not in [p["label"] for p in partial["points"]]
    assert "In progress: 4 of 5 runs scored" in (tmp_path / "study.md").read_text()
    with pytest.raises(ValueError, match=r"holds a study of budget 'smoke' .*got budget 'large'"):
        study.study(tmp_path, budget="large", datasets=["procedural"], progress=False)
    # the same budget name with another plan (a budget whose settings changed) is refused too
    smoke = study.BUDGETS["smoke"]
    monkeypatch.setitem(study.BUDGETS, "smoke", dataclasses.replace(smoke, steps=3))
    with pytest.raises(ValueError, match=r"'smoke' with plan .*'steps': 2.*'steps': 3"):
        study.study(tmp_path, budget="smoke", datasets=["procedural"], progress=False)


def _score(fid: float, l1: float, active: int, gmm_fid: float | None = None) -> dict:
    prior = {"fid": fid, "kid_mean": 0.0, "precision": 0.5, "recall": 0.5}
    ex_post = prior | {"fid": fid / 2 if gmm_fid is None else gmm_fid}
    return {
        "images": 10,
        "l1": l1,
        "prior": prior,
        "samplers": {"prior": prior, "gaussian": prior, "gmm": ex_post},
        "reconstruction_fid": fid,
        "active_units": active,
        "latent_dim": 16,
        "collapsed": active < 8,
    }


def test_summary_and_selection_use_the_validation_split() -> None:
    points = {p.label: p for p in sweep_points()}
    # beta-vae-0.3: best on test, worse on validation; vae: the other way round
    low_test = _summary(
        points["beta-vae-0.3"],
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
    assert low_validation["validation_gmm_fid"] == (7.5, pytest.approx(math.sqrt(12.5)))
    assert low_validation["validation_prior_fid"] == low_validation["validation_fid"]
    assert _best([low_test, low_validation], "beta-vae")["label"] == "vae"
    # with the GMM sampler the other point wins on validation
    gmm_low_test = _summary(
        points["beta-vae-0.3"],
        [{"validation": _score(30, 0.1, 16, gmm_fid=1), "test": _score(1, 0.1, 16)}],
    )
    assert _best([gmm_low_test, low_validation], "beta-vae", "gmm")["label"] == "beta-vae-0.3"


def _row(family: str, label: str, l1: float, fid: float, gmm: float, sd: float = 1.0) -> dict:
    row: dict = {"family": family, "label": label, "gan": False}
    for split in ("validation", "test"):
        row[f"{split}_l1"] = (l1, 0.0)
        row[f"{split}_prior_fid"] = (fid, sd)
        row[f"{split}_gaussian_fid"] = (gmm + 1, sd)
        row[f"{split}_gmm_fid"] = (gmm, sd)
    return row


def test_headline_interpolates_each_frontier_at_the_vae_l1() -> None:
    rows = [
        _row("beta-vae", "vae", 0.08, 30, 10),
        _row("beta-vae", "beta-vae-3", 0.10, 20, 8),
        _row("eq22", "a", 0.06, 50, 6, sd=2.0),
        _row("eq22", "b", 0.10, 30, 4, sd=4.0),
        _row("eq22", "beaten", 0.07, 60, 9),  # worse L1 and FID than "a": off the frontier
        _row("wae-mmd", "w", 0.09, 10, 3),  # one point, reconstructing worse than the VAE
        _row("eq22-full", "f1", 0.05, 25, 5),
        _row("eq22-full", "f2", 0.06, 22, 4),  # both reconstruct better than the VAE
    ]
    # at L1 0.08, halfway from a (0.06) to b (0.10): FID 40, sd 3; GMM 5 (chosen over gaussian)
    assert study.at_l1(rows, "eq22", "test", "prior", 0.08) == {
        "fid": (pytest.approx(40.0), pytest.approx(3.0)),
        "between": ["a", "b"],
        "l1_range": [0.06, 0.10],
        "bound": None,
    }
    headline = study._headlines(rows, ["beta-vae", "eq22", "wae-mmd", "eq22-full"])
    assert headline["vae_l1"] == {"validation": 0.08, "test": 0.08}
    assert headline["beta-vae"]["prior"]["fid"] == (30, 1.0)
    assert headline["eq22"]["ex_post_sampler"] == "gmm"
    assert headline["eq22"]["ex_post"]["fid"] == (pytest.approx(5.0), pytest.approx(3.0))
    outside = headline["wae-mmd"]["prior"]
    assert math.isnan(outside["fid"][0]) and outside["between"] is None
    assert outside["l1_range"] == [0.09, 0.09]
    # better reconstruction everywhere: the lowest frontier FID bounds the family's at 0.08
    bounded = headline["eq22-full"]["prior"]
    assert (bounded["fid"], bounded["between"], bounded["bound"]) == ((22, 1.0), ["f2"], "upper")


def test_headline_by_seed_pairs_each_seed_with_its_own_vae(tmp_path: Path) -> None:
    """Each seed's headline is read off that seed's frontier at that seed's VAE L1; the spread
    is over those per-seed figures."""
    points = [p for p in sweep_points() if p.label in {"vae", "beta-vae-3", "eq22-r1000"}]
    points.append(next(p for p in sweep_points() if p.label == "eq22-r2000-i1"))
    runs = {  # (L1, N(0, I) FID) per seed; the GMM's FID is half of it (_score)
        0: {"vae": (0.08, 30), "beta-vae-3": (0.10, 20), "eq22-r1000": (0.06, 50),
            "eq22-r2000-i1": (0.10, 30)},
        1: {"vae": (0.09, 40), "beta-vae-3": (0.11, 20), "eq22-r1000": (0.07, 40),
            "eq22-r2000-i1": (0.11, 20)},
    }  # fmt: skip
    (tmp_path / "scores").mkdir()
    for seed, scores in runs.items():
        for label, (l1, fid) in scores.items():
            record = {"validation": _score(fid, l1, 16), "test": _score(fid, l1, 16)}
            (tmp_path / "scores" / f"{label}-s{seed}.json").write_text(json.dumps(record))
    result = study._headlines_by_seed(tmp_path, points, (0, 1), ["beta-vae", "eq22"])
    # eq22 at L1 0.08 (seed 0): halfway from 50 to 30; at 0.09 (seed 1): halfway from 40 to 20
    assert result["seeds"]["0"]["eq22"] == {
        "prior": pytest.approx(40.0), "ex_post": pytest.approx(20.0), "ex_post_sampler": "gmm",
    }  # fmt: skip
    assert result["seeds"]["1"]["eq22"]["prior"] == pytest.approx(30.0)
    assert result["prior"]["eq22"] == (pytest.approx(35.0), pytest.approx(math.sqrt(50)))
    assert result["ex_post"]["eq22"] == (pytest.approx(17.5), pytest.approx(math.sqrt(12.5)))
    assert result["prior"]["beta-vae"] == (pytest.approx(35.0), pytest.approx(math.sqrt(50)))


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
    assert summary["test_gmm_fid"] == (4.5, 0.0)
    all_failed = _summary(point, [record])
    assert math.isnan(all_failed["validation_fid"][0]) and math.isnan(all_failed["collapse_rate"])
    assert _best([all_failed, summary | {"label": "other"}], point.family)["label"] == "other"


def test_sweep_covers_the_issue(tmp_path: Path) -> None:
    points = sweep_points()
    assert {p.family for p in points} == set(FAMILIES)
    for family in FAMILIES:  # >= 4 weight points per family
        assert [p.family for p in points].count(family) == (5 if "eq22" in family else 4)
    assert {"vae", "beta-vae-3", "wae-mmd-1000", "eq22-r500", "eq22-full-r5000"} <= {
        p.label for p in points
    }
    assert not any(p.gan for p in points)
    by_label = {p.label: p for p in points}
    recommended = RegularizedELBO.recommended()
    for label, covariance in (("eq22-r5000", "diagonal"), ("eq22-full-r5000", "full")):
        settings = dict(by_label[label].settings)
        # the recommended preset, with either KL_G
        assert (settings["beta3"], settings["beta2"]) == (recommended.beta3, recommended.beta2)
        assert settings["objective"] == "mixture" and settings["covariance"] == covariance
    assert dict(by_label["eq22-full-r2000-i1"].settings)["beta2"] == 1.0
    for point in [*points, *(p.with_gan() for p in points)]:  # every run is a valid config
        for dataset in ("mnist", "procedural"):
            config = study._config(dataset, study.BUDGETS["default"], point, 1, tmp_path)
            assert config.gan == point.gan and config.seed == 1
            assert config.holdout == (500 if dataset == "mnist" else 200)
            assert config.model_config.grey == (dataset == "mnist")  # no colour cast on MNIST


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


def test_cli_jobs_share_the_runs_between_workers(tmp_path: Path) -> None:
    """``--jobs 2``: two worker processes share the sweep's runs, a second round trains the
    GAN stage, then one report over all of them."""
    out = tmp_path / "study"
    argv = ["--out", str(out), "--budget", "smoke", "--families", "wae-mmd", "--no-progress"]
    argv += ["--datasets", "procedural"]
    started = time.perf_counter()
    assert main([*argv, "--jobs", "2", "--threads", "2"]) == 0
    wall = time.perf_counter() - started
    summary = json.loads((out / "study.json").read_text())
    assert set(summary["datasets"]) == {"procedural"}
    assert (summary["jobs"], summary["threads"]) == (2, 1)
    logs = [(out / f"worker-{k}.log").read_text() for k in (0, 1)]
    # every run trained once, by whichever worker claimed it first: 4 points + 1 GAN run
    assert sum(log.count("world size 1") for log in logs) == 5
    assert len(list((out / "procedural" / "scores").glob("*.json"))) == 5
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
    assert "failed (exit 1); see" in error and "worker-" in error and ".log" in error
    assert not (tmp_path / "study.json").exists()


def test_a_claimed_run_is_left_to_its_claimant(tmp_path: Path) -> None:
    """A run another process has claimed (its flock held) is neither trained nor scored here;
    the study reports nothing until it is scored, and a later call trains only that run."""
    argv = {"budget": "smoke", "datasets": ["procedural"], "families": ["wae-mmd"]}
    claimed = "wae-mmd-100-s0"
    with RunLock.acquire(tmp_path / "procedural" / "claims" / claimed):
        summary = study.study(tmp_path, progress=False, **argv)
    assert summary["datasets"] == {}  # a point of the sweep is not scored: no report for it
    scores = tmp_path / "procedural" / "scores"
    trained = sorted(p.stem for p in scores.glob("*.json"))
    assert trained == ["wae-mmd-10-s0", "wae-mmd-1000-s0", "wae-mmd-10000-s0"]
    assert not (tmp_path / "procedural" / "runs" / claimed).exists()
    before = {p.name: p.stat().st_mtime_ns for p in scores.glob("*.json")}
    summary = study.study(tmp_path, progress=False, **argv)
    assert (scores / f"{claimed}.json").is_file()
    assert all(
        p.stat().st_mtime_ns == before[p.name] for p in scores.glob("*.json") if p.name in before
    )
    assert len(summary["datasets"]["procedural"]["points"]) == 5  # 4 points + the GAN run
