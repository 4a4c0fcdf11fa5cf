"""Every script in examples/ runs on the tiny world (so they never rot)."""

import os
import re
import subprocess
import sys

import pytest

from structvpr.tasks import StructVPRStudent


@pytest.fixture(scope="module")
def student(trained, tmp_path_factory):
    return str(
        StructVPRStudent.load_from_checkpoint(trained["baseline"]).export_student(
            tmp_path_factory.mktemp("examples") / "student.ckpt"
        )
    )


def _run(repo_root, script, *args, cwd=None):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(
        [sys.executable, str(repo_root / "examples" / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or repo_root,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_example_has_a_test(repo_root):
    scripts = {p.name for p in (repo_root / "examples").glob("*.py")}
    tested = {
        "encode_and_search.py",
        "recall_plain_pytorch.py",
        "custom_aggregator.py",
        "finetune_on_folders.py",
        "place_batches_plain_pytorch.py",
    }
    assert scripts == tested


def test_encode_and_search(repo_root, tiny_world, student):
    out = _run(
        repo_root,
        "encode_and_search.py",
        "--ckpt",
        student,
        "--database",
        tiny_world / "images/test/database",
        "--queries",
        tiny_world / "images/test/queries",
        "--image-size",
        32,
        64,
        "--top-k",
        3,
    )
    lines = out.strip().splitlines()
    assert len(lines) == 12 and all(line.count(".png (") == 3 for line in lines)  # 12 queries, top 3 each


def test_recall_in_a_plain_pytorch_loop(repo_root, tiny_world, student):
    out = _run(repo_root, "recall_plain_pytorch.py", "--ckpt", student, "--root", tiny_world, "--image-size", 32, 64)
    values = dict(re.findall(r"(\S+)=(\S+)", out))
    assert values["num_queries"] == "12" and 0 <= float(values["R@1"]) <= float(values["R@10"]) <= 100


def test_place_batches_in_a_plain_pytorch_loop(repo_root, tiny_world):
    out = _run(repo_root, "place_batches_plain_pytorch.py", "--root", tiny_world, "--steps", 7)
    lines = out.strip().splitlines()
    # 16 cells of 8 m, one with a single image; 3 groups of 5 places give one batch of 3 each
    assert lines[0] == "15 places, 3 batches of 3 x 2 per epoch"
    # steps 0 and 5: epoch 1 holds steps 3 to 5; BoQ with 64 channels x 4 rows
    assert [line.split(" loss ")[0] for line in lines[1:]] == ["step 0 epoch 0", "step 5 epoch 1"]
    assert all(line.endswith("descriptors (6, 256)") for line in lines[1:])


def test_custom_aggregator_from_a_config(repo_root, tiny_world, tmp_path):
    out = _run(repo_root, "custom_aggregator.py", "--root", tiny_world, "--out", tmp_path, cwd=tmp_path)
    assert "aggregator MeanMaxPool: descriptors of 256 dimensions" in out  # 2 x 128 trunk channels


def test_finetune_on_folders(repo_root, tiny_world, student, tmp_path):
    out = _run(
        repo_root,
        "finetune_on_folders.py",
        "--ckpt",
        student,
        "--root",
        tiny_world,
        "--image-size",
        32,
        64,
        "--epochs",
        1,
        "--out",
        tmp_path,
    )
    assert "exported" in out and (tmp_path / "student.ckpt").is_file()
    StructVPRStudent.load_from_checkpoint(tmp_path / "student.ckpt")
