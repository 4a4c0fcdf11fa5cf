"""The weighting experiment's statistics and partition diagnostics, on known answers."""

import json

import numpy as np
import pytest

from tests.benchmark_modules import load_benchmark

report = load_benchmark("report_distillation")
experiment = load_benchmark("distillation_experiment")


def test_interval_is_the_t_interval_of_the_mean():
    out = report.interval([1, 2, 3, 4, 5])
    # sd = sqrt(2.5), t(0.975, 4) = 2.7764451
    assert out["mean"] == 3.0 and out["n"] == 5
    assert out["ci95"] == pytest.approx(2.7764451 * np.sqrt(2.5) / np.sqrt(5), abs=0.01)


def test_paired_difference_counts_wins_and_gives_the_sign_test():
    a = [10, 12, 11, 15, 9, 14, 13, 12, 11, 10]
    b = [9, 10, 11, 12, 10, 11, 12, 11, 10, 9]
    out = report.paired(a, b)
    assert (out["wins"], out["losses"], out["ties"]) == (8, 1, 1)
    assert out["mean"] == pytest.approx(np.mean(np.subtract(a, b)), abs=0.01)
    assert out["sign_p"] == pytest.approx(0.0391, abs=1e-3)  # two-sided binomial, 8 of 9


def test_partition_record_scores_the_noisy_group_against_the_manifest():
    names = ["db0", "db1", "q0", "q1", "q2", "q3"]
    truth = {"q0": {"corrupted": True}, "q1": {"corrupted": True}, "q2": {"corrupted": False}, "q3": {"corrupted": True}}
    history = [
        {
            "subepoch": 0,
            "image_ids": np.array([2, 3, 4, 5]),
            "teacher_ranks": np.array([9, 1, 7, 1]),
            "student_ranks": np.array([1, 3, 1, 1]),
            "weights": np.array([0.0, 1.2, 0.0, 0.8]),
        }
    ]
    out = experiment.partition_record(history, names, truth, tau=5)
    epoch = out["epochs"][0]
    # noisy: q0 (corrupted) and q2 (clean); corrupted: q0, q1, q3
    assert epoch["noisy_count"] == 2 and epoch["noisy_corrupted"] == 1
    assert epoch["precision"] == 0.5 and epoch["recall"] == pytest.approx(1 / 3)
    assert out["first_groups"] == {"q0": 0, "q1": 1, "q2": 0, "q3": 2}
    assert epoch["teachable_count"] == 1 and epoch["consistent_count"] == 1 and epoch["teacher_rank1"] == 2


def test_group_gains_pool_training_query_hits_by_group_and_condition(tmp_path):
    world = tmp_path / "noise0.3_seed0" / "world"
    world.mkdir(parents=True)
    images = [
        {
            "split": "train",
            "role": "queries",
            "path": f"images/train/queries/q{i}.png",
            "condition": {"illumination": ill, "fog": fog},
        }
        for i, (ill, fog) in enumerate([("night", 0.0), ("night", 0.0), ("day", 0.4)])
    ]
    (world / "manifest.json").write_text(json.dumps({"images": images}))
    baseline = {"train_ranks": {"q0.png": 4, "q1.png": 1, "q2.png": 2}}
    student = {
        "train_ranks": {"q0.png": 1, "q1.png": 1, "q2.png": 1},
        "partition": {"first_groups": {"q0.png": 1, "q1.png": 1, "q2.png": 2}},
    }
    out = report.group_gains([(baseline, student)], tmp_path, 0.3, [0])
    assert out["teachable"]["night"] == {"n": 2, "baseline": 50.0, "student": 100.0, "gain": 50.0}
    assert out["consistent"]["fog"] == {"n": 1, "baseline": 0.0, "student": 100.0, "gain": 100.0}
    assert out["teachable"]["all"]["n"] == 2 and "noisy" not in out


def test_grid_moves_one_factor_at_a_time_around_the_centre():
    settings = experiment.grid_settings("weighted")
    assert settings[0] == experiment.CENTRE
    assert len(settings) == 1 + 3 + 2 + 2  # lambda, tau, alpha: the centre value counted once
    assert all(sum(s[k] != experiment.CENTRE[k] for k in s) <= 1 for s in settings)
    assert experiment.grid_settings("uniform") == [{**experiment.CENTRE, "distill_weight": v} for v in (30.0, 3.0, 10.0, 100.0)]
