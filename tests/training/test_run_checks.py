"""A run checks everything it will read before its first step; an evaluation that fails mid-run costs its results only.

Also: the logged loss is the mean of its window (batches alternate between sources),
a finished run resumed says where its checkpoint is, and the printed resume command
works from any directory.
"""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multimodal.apps import evaluation
from multimodal.training import trainer
from multimodal.training.run_log import LossWindow
from multimodal.training.train_config import parse_config
from multimodal.data.writing.writer import SampleSource, write_shards
from tests.training.test_train import ENV, run_args, run_trainer, tiny_dataset_at


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data = tiny_dataset_at(root)
    # Labelled shards for zero-shot sets: two classes, labels in the json member.
    from torchvision.io import encode_png

    samples = []
    for index in range(8):
        image = torch.full((3, 16, 16), 40 + 100 * (index % 2), dtype=torch.uint8)
        samples.append(SampleSource(key=f"v{index}", media={"png": encode_png(image).numpy().tobytes()},
                                    caption="a square", extra={"label": index % 2}))
    data["labelled"] = write_shards(samples, root / "labelled", prefix="val").splits["all"].spec
    return data


def zero_shot_set(shards: str, **changes) -> str:
    entry = {"name": "squares", "shards": shards, "modality": "image", "class_names": ["dark", "light"], **changes}
    return json.dumps([entry])


def start_failure(dataset, tmp_path, *extra) -> subprocess.CompletedProcess:
    args = run_args(dataset, tmp_path / "runs", 2, list(extra))[2:]
    return run_trainer(args)


@pytest.mark.parametrize("case, expected", [
    (["--data.eval", "EVAL:NOWHERE/val-{000..001}.tar"],
     "data.eval[0] (squares).shards: none of the 2 shards of 'NOWHERE/val-{000..001}.tar' exists"),
    (["--data.eval", "EVAL:LABELLED:class_names=one"],
     "data.eval[0] (squares).shards: sample v1 of "),
    (["--data.eval", "EVAL:UNLABELLED"], "data.eval[0] (squares).shards: the set reads image with a class label, "
                                         "but none of the 64 samples of its 4 local shards does (missing_label 64)"),
    (["--data.eval", "EVAL:LABELLED:modality=audio"], "data.eval[0] (squares): the model has no audio encoder"),
    (["--data.tokenizer", "NOWHERE/tokenizer.json"], "data.tokenizer: NOWHERE/tokenizer.json does not exist"),
    (["--init_from", "NOWHERE/checkpoint"], "init_from: NOWHERE/checkpoint does not exist"),
    (["--init_from", "TMP"], "is not a checkpoint directory: config.json is missing"),
    (["--output_dir", "FILE/runs"], "output_dir: cannot create"),
])
def test_a_wrong_path_or_set_fails_before_training_with_one_line_and_no_run_folder(dataset, tmp_path, case, expected):
    (tmp_path / "a-file").write_text("")
    resolved = []
    for arg in case:
        if arg.startswith("EVAL:"):
            _, shards, *change = arg.split(":")
            shards = {"LABELLED": dataset["labelled"], "UNLABELLED": dataset["spec"]}.get(shards, shards)
            changes = dict(item.split("=") for item in change)
            if "class_names" in changes:
                changes["class_names"] = [changes["class_names"]]  # one class: label 1 is outside
            arg = zero_shot_set(shards, **changes)
        resolved.append(arg.replace("TMP", str(tmp_path)).replace("FILE", str(tmp_path / "a-file")))
    done = start_failure(dataset, tmp_path, *resolved)
    assert done.returncode == 2, done.stderr[-2000:]
    assert expected in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "runs").exists()


def failing_evaluations(monkeypatch, fail_at_calls: set[int]):
    """Makes run_evaluations raise OSError (a shard deleted mid-run) on the given calls (1-based)."""
    real, calls = evaluation.run_evaluations, []

    def run_evaluations(*args, **kwargs):
        calls.append(1)
        if len(calls) in fail_at_calls:
            raise OSError("[Errno 2] No such file or directory: 'val-000000.tar'")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "run_evaluations", run_evaluations)


def test_an_evaluation_failing_mid_run_is_reported_and_training_goes_on(dataset, tmp_path, monkeypatch):
    failing_evaluations(monkeypatch, {1})
    args = run_args(dataset, tmp_path, 4, ["--eval_every", "2", "--data.eval", zero_shot_set(dataset["labelled"])])[2:]
    result = trainer.train(parse_config(args))
    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    failed = [row for row in rows if "eval_error" in row]
    assert [row["step"] for row in failed] == [2]
    assert failed[0]["eval_error"] == "OSError: [Errno 2] No such file or directory: 'val-000000.tar'"
    assert "step 2\nTraceback" in (run_dir / "eval-errors.log").read_text()
    # Training went on to the end, and the final evaluation ran.
    assert result["step"] == 4 and "squares/accuracy@1" in result["results"]
    assert Path(result["checkpoint"]).name == "step-0000004"


def test_a_failed_final_evaluation_keeps_the_checkpoint_and_exits_1(dataset, tmp_path, monkeypatch, capsys):
    failing_evaluations(monkeypatch, {1})
    args = run_args(dataset, tmp_path, 3, ["--data.eval", zero_shot_set(dataset["labelled"])])[2:]
    with pytest.raises(SystemExit) as exit_info:
        trainer.main(args)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000003"
    assert "train.py: error: the final evaluation failed: OSError: [Errno 2]" in error
    assert f"its checkpoint is kept: {checkpoint}" in error
    assert (checkpoint / "model.safetensors").is_file()


def test_evaluation_sets_may_change_on_resume(dataset, tmp_path, capsys):
    args = run_args(dataset, tmp_path, 3, ["--data.eval", zero_shot_set(dataset["labelled"], name="first")])[2:]
    trainer.main(args)
    # A finished run, resumed with another evaluation set: it is evaluated, and its checkpoint named.
    resumed = trainer.main(["--output_dir", str(tmp_path), "--run_name", "run", "--resume", "latest",
                            "--data.eval", zero_shot_set(dataset["labelled"], name="second"), "--plot", "false"])
    printed = capsys.readouterr().out
    assert "second/accuracy@1" in resumed["results"] and "first/accuracy@1" not in resumed["results"]
    assert f"checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step-0000003'}" in printed
    assert "the run has trained its 3 steps already" in printed


def test_the_logged_loss_is_the_mean_of_its_window():
    class OneProcess:
        device = torch.device("cpu")

        def reduce(self, tensor, reduction):
            return tensor

    window = LossWindow()
    window.add(torch.tensor(4.0), {"image-text": torch.tensor(4.0)})
    window.add(torch.tensor(2.0), {"audio-text": torch.tensor(2.0)})
    window.add(torch.tensor(3.0), {"image-text": torch.tensor(3.0)})
    mean, pairs = window.means(OneProcess())
    assert mean == pytest.approx(3.0)
    assert pairs == {"image-text": pytest.approx(3.5), "audio-text": pytest.approx(2.0)}


def test_the_resume_command_works_from_any_directory(tmp_path):
    command = shlex.split(trainer.resume_command(tmp_path / "runs" / "my run"))
    assert command[:3] == [sys.executable, "-m", "multimodal.training.trainer"]
    assert command[3:] == ["--output_dir", str(tmp_path / "runs"), "--run_name", "my run", "--resume", "latest"]
    # The module runs from a directory that is not the repository's.
    done = subprocess.run([sys.executable, "-m", "multimodal.training.trainer", "--resume", "latest", "--output_dir",
                           str(tmp_path / "runs"), "--run_name", "my run"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--resume latest: no checkpoint under" in done.stderr


def test_a_wrong_evaluation_path_fails_before_the_demo_is_built(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        trainer.main(["--output_dir", str(tmp_path / "runs"), "--data.demo_dir", str(tmp_path / "demo"),
                      "--data.eval", zero_shot_set("NOWHERE/val.tar")])
    assert exit_info.value.code == 2
    assert "data.eval[0] (squares).shards: none of the 1 shards of 'NOWHERE/val.tar' exists" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists() and not (tmp_path / "runs").exists()
