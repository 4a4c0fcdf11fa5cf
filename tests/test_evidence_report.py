"""The evidence experiment's design helpers and statistics, on known answers."""

import math
import os
import subprocess
import sys

import pytest

from tests.benchmark_modules import load_benchmark

report = load_benchmark("report_evidence")
evidence = load_benchmark("evidence")


def test_minimum_detectable_difference_known_answers():
    # n = 10, sd = 1: (t_0.975,9 + t_0.8,9) / sqrt(10) = (2.2622 + 0.8834) / 3.1623
    assert report.minimum_detectable(1.0, 10) == pytest.approx(0.99472, abs=1e-4)
    # large n tends to the normal form (1.96 + 0.8416) sd / sqrt(n)
    assert report.minimum_detectable(3.0, 10_000) == pytest.approx(2.8016 * 3 / 100, rel=1e-3)
    assert math.isnan(report.minimum_detectable(1.0, 1))
    # the fewest pairs reaching an MDD of 2 with sd 4: n = 34 gives 1.99, n = 33 gives 2.02
    n = report.pairs_needed(4.0, 2.0)
    assert report.minimum_detectable(4.0, n) <= 2.0 < report.minimum_detectable(4.0, n - 1)
    assert n == 34


def test_paired_difference_counts_and_mdd():
    out = report.paired([3.0, 5.0, 4.0, 2.0], [1.0, 1.0, 4.0, 3.0])
    # differences 2, 4, 0, -1: mean 1.25, sd 2.2174
    assert (out["mean"], out["wins"], out["losses"], out["ties"], out["n"]) == (1.25, 2, 1, 1, 4)
    assert out["sd"] == pytest.approx(2.22, abs=0.01)
    assert out["mdd"] == pytest.approx(report.minimum_detectable(2.2174, 4), abs=0.01)


def test_selection_takes_the_best_val_epoch_in_the_window_earliest_on_ties():
    curve = [{"epoch": e, "val/R@1": v} for e, v in enumerate([10, 50, 40, 60, 55, 60, 20])]
    assert evidence.selected(curve, 0, 6)["epoch"] == 3
    assert evidence.selected(curve, 4, 6)["epoch"] == 5
    assert evidence.selected(curve, 0, 2)["epoch"] == 1


def test_grid_is_the_full_product_and_controls_share_uniforms_lambda():
    settings = evidence.grid("meanone_image")
    assert len(settings) == 8 and len({evidence.setting_key(s) for s in settings}) == 8
    assert {s["distill_weight"] for s in settings} == {10.0, 30.0} and {s["alpha"] for s in settings} == {0.5, 2.0}
    assert [len(evidence.grid(r)) for r in ("uniform", "paper", "meanone")] == [3, 8, 8]
    for row in ("oracle", "random_teacher", "self_distill"):
        assert evidence.ROWS[row]["lambda_of"] == "uniform"


def test_world_ranges():
    assert evidence.world_range("5-8") == (5, 6, 7, 8)
    assert evidence.world_range("5,7,9-10") == (5, 7, 9, 10)


def _result(path, r1, curve=(40.0, 45.0, 46.0)):
    import json

    path.mkdir(parents=True, exist_ok=True)
    points = [{"epoch": e, "val/R@1": v} for e, v in enumerate(curve)]
    test = {"R@1": r1 / 100, "R@5": 0.9, "R@10": 0.95}
    rec = {"test": test, "selected": points[-1], "val_curve": points, "targets": [], "seconds": 1.0}
    (path / "result.json").write_text(json.dumps(rec))


def test_extension_pools_an_earlier_report_with_new_worlds(tmp_path):
    """Worlds 0-1 from an earlier report, 5-6 run here (6 without its scratch row): each comparison is
    paired over the worlds where both rows finished, with the known mean differences."""
    import json

    chosen = {
        "lambda0": {"distill_weight": 0.0, "tau": 5, "alpha": 1.0},
        "uniform": {"distill_weight": 10.0, "tau": 5, "alpha": 1.0},
        "self_distill": {"distill_weight": 10.0, "tau": 5, "alpha": 1.0},
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "chosen.json").write_text(json.dumps({"tune_seed": 100, "confirm_seed": 101, "chosen": chosen}))
    previous = tmp_path / "previous.json"
    previous.write_text(
        json.dumps(
            {
                "design": {"complete_worlds": [0, 1]},
                "test_per_world": {
                    "lambda0": {"0": 40.0, "1": 50.0},
                    "uniform": {"0": 44.0, "1": 52.0},
                    "self_distill": {"0": 41.0, "1": 50.0},
                    "baseline_full": {"0": 39.0, "1": 48.0},
                },
            }
        )
    )
    for seed, (lam0, uni, scratch) in {5: (45.0, 51.0, 50.0), 6: (42.0, 44.0, None)}.items():
        world = work / f"world{seed}"
        _result(world / "lambda0" / "lam0_tau5_alpha1", lam0)
        _result(world / "uniform" / "lam10_tau5_alpha1", uni)
        if scratch is not None:
            _result(world / "scratch" / "lam10_tau5_alpha1", scratch)
    _result(work / "world100" / "lambda0" / "lam0_tau5_alpha1", 99.0)  # the tuning world never counts
    out = report.extension(work, previous, base_epochs=24, cont_epochs=6)
    assert out["test_per_world"]["uniform"] == {"0": 44.0, "1": 52.0, "5": 51.0, "6": 44.0}
    # uniform - lambda0 over worlds 0, 1, 5, 6: 4, 2, 6, 2
    p = out["paired_R@1"]["uniform - lambda0"]
    assert (p["worlds"], p["mean"], p["wins"]) == ([0, 1, 5, 6], 3.5, 4)
    assert out["paired_R@1"]["uniform - self_distill"]["worlds"] == [0, 1]
    assert "scratch - uniform" not in out["paired_R@1"]  # one world only
    assert out["val_curves"]["lambda0"] == {"worlds": 2, "mean_val_R@1": [40.0, 45.0, 46.0], "last3_change": 6.0}
    assert out["design"]["worlds"] == {"0": "previous.json", "1": "previous.json", "5": "work", "6": "work"}
    assert "| uniform - lambda0 |" in report.extension_markdown(out)


def test_extension_pools_a_report_and_an_earlier_extension(tmp_path):
    """A first report (weighting rows on worlds 0-1) and an extension of it (key rows on worlds 0-2):
    the rows are unioned per world, a world keeps the name of the first file that has it, and two
    files that disagree on one row and world are refused."""
    import json

    chosen = {row: {"distill_weight": 10.0, "tau": 5, "alpha": 1.0} for row in ("uniform", "oracle")}
    chosen["lambda0"] = {"distill_weight": 0.0, "tau": 5, "alpha": 1.0}
    work = tmp_path / "work"
    work.mkdir()
    (work / "chosen.json").write_text(json.dumps({"tune_seed": 100, "confirm_seed": 101, "chosen": chosen}))
    first = tmp_path / "evidence.json"
    first.write_text(
        json.dumps(
            {
                "design": {"complete_worlds": [0, 1]},
                "test_per_world": {"uniform": {"0": 50.0, "1": 52.0}, "oracle": {"0": 49.0, "1": 55.0}},
                "wall_seconds": 7740,
            }
        )
    )
    ext = tmp_path / "evidence_extended.json"
    ext.write_text(
        json.dumps(
            {
                "design": {"worlds": {"0": "evidence.json", "1": "evidence.json", "2": "evidence"}},
                "test_per_world": {"uniform": {"0": 50.0, "1": 52.0, "2": 40.0}},
                "wall_seconds": {"world 2, 2 processes": 1200},
            }
        )
    )
    _result(work / "world3" / "uniform" / "lam10_tau5_alpha1", 45.0)
    _result(work / "world3" / "oracle" / "lam10_tau5_alpha1", 46.0)
    (work / "wall_seconds.json").write_text(json.dumps({"what": "world 3", "seconds": 600}))
    out = report.extension(work, [first, ext], base_epochs=24, cont_epochs=6)
    assert out["wall_seconds"] == {"evidence.json, every row": 7740, "world 2, 2 processes": 1200, "world 3": 600}
    assert out["test_per_world"]["uniform"] == {"0": 50.0, "1": 52.0, "2": 40.0, "3": 45.0}
    # oracle - uniform over worlds 0, 1, 3: -1, +3, +1
    p = out["paired_R@1"]["oracle - uniform"]
    assert (p["worlds"], p["mean"], p["wins"], p["losses"]) == ([0, 1, 3], 1.0, 2, 1)
    assert out["design"]["worlds"] == {"0": "evidence.json", "1": "evidence.json", "2": "evidence_extended.json", "3": "work"}
    ext.write_text(ext.read_text().replace('"1": 52.0', '"1": 53.0'))
    with pytest.raises(SystemExit, match="uniform on world 1 is 53.0, an earlier report says 52.0"):
        report.extension(work, [first, ext], base_epochs=24, cont_epochs=6)


@pytest.mark.slow
def test_the_whole_experiment_runs_on_the_tiny_preset(tmp_path, repo_root):
    """Every phase of benchmarks/run_evidence.sh, --smoke: a report with every row, the oracle's mass on
    corrupted targets 0, and per-image weighting reaching database images."""
    import json

    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", "benchmarks/run_evidence.sh", "--smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "report")],
        cwd=repo_root,
        env=env,
        check=True,
        capture_output=True,
    )
    out = json.loads((tmp_path / "report.json").read_text())
    assert out["design"]["complete_worlds"] == [0]
    assert set(out["test"]) == set(report.ROWS)
    assert out["targets"]["oracle"]["corrupted_share_of_mass"] == 0.0
    assert out["partition"]["meanone_image"]["database"]["images"] > 0
    assert out["partition"]["meanone"]["database"]["images"] == 0
