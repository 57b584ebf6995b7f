"""The trainer's step on 2 CPU processes (gloo) and with accumulation equals one process over the same global batch.

What is compared is what the claim is about: the loss and the gradients before the
optimiser. They are sums of the same terms in another order, so they agree to fp32
reduction error: a few ulps of the largest term, which is why the tolerance of each
gradient tensor scales with its largest entry. The step itself is checked with SGD
(see tests/_train_step_worker.py), whose update carries the gradients' error times
the learning rate and nothing more.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "_train_step_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
from _train_step_worker import SGD_LR  # noqa: E402

# fp32 rounds to 2^-24 (6e-8) of a value; the same sums taken in another order (other
# matmul shapes for micro-batches, another reduction across processes) differ here by up
# to 5e-6 of a tensor's largest gradient. 1e-4 leaves a margin of 20 for other machines'
# kernels, and is still far below what a real fault would cost (a micro-batch missing,
# counted twice or scaled wrongly moves gradients by tens of percent).
RELATIVE_TO_LARGEST = 1e-4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(tmp_path: Path, num_processes: int, accum_steps: int, distributed: str = "ddp") -> dict:
    output = tmp_path / f"step-{num_processes}-{accum_steps}-{distributed}.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    if num_processes == 1:
        command = [sys.executable, str(WORKER), str(output), str(accum_steps), distributed]
    else:
        # torchrun: `accelerate launch --cpu` starts one process whatever --num_processes says;
        # Accelerate picks the processes' ranks up from torchrun's environment.
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            str(WORKER), str(output), str(accum_steps), distributed,
        ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = torch.load(output)
    assert result["num_processes"] == num_processes
    return result


def largest(tensor: torch.Tensor) -> float:
    return float(tensor.abs().max()) if tensor.numel() else 0.0


def assert_close_to_reduction_error(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    atol = RELATIVE_TO_LARGEST * largest(expected) + 1e-12
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4, msg=lambda m: f"{what}: {m}")


def assert_same_step(got: dict, reference: dict, case: str) -> None:
    """Loss and gradients to reduction error; the SGD step to the learning rate times that error."""
    torch.testing.assert_close(got["loss"], reference["loss"], atol=1e-6, rtol=1e-6, msg=lambda m: f"loss ({case}): {m}")
    assert set(got["gradients"]) == set(reference["gradients"])
    for name, gradient in reference["gradients"].items():
        assert_close_to_reduction_error(got["gradients"][name], gradient, f"gradient of {name} ({case})")
    # The SGD step moves each parameter by lr x its (clipped) gradient: the same to lr x that error.
    for name, value in reference["state"].items():
        gradient = reference["gradients"].get(name)
        if gradient is None:
            assert torch.equal(got["state"][name], value), f"{name} ({case})"
        else:
            torch.testing.assert_close(got["state"][name], value, rtol=0,
                                       atol=SGD_LR * RELATIVE_TO_LARGEST * largest(gradient) + 1e-7,
                                       msg=lambda m: f"{name} after the step ({case}): {m}")


@pytest.mark.slow
def test_two_processes_and_accumulation_match_one_process(tmp_path):
    reference = launch(tmp_path, 1, 1)
    assert len(reference["gradients"]) > 30
    for num_processes, accum_steps in ((2, 1), (2, 2), (1, 4)):
        case = f"{num_processes} processes, accum {accum_steps}"
        got = launch(tmp_path, num_processes, accum_steps)
        assert_same_step(got, reference, case)


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process_and_saves_a_checkpoint_any_loader_reads(tmp_path):
    """FSDP (sharded weights, gradients, optimiser state) computes the one-process step; its checkpoint loads whole."""
    from multimodal.checkpoint import list_checkpoints, load_model
    from _train_step_worker import global_batch

    reference = launch(tmp_path, 1, 1)
    got = launch(tmp_path, 2, 1, "fsdp")
    assert_same_step(got, reference, "fsdp, 2 processes")
    checkpoint = list_checkpoints(tmp_path / "step-2-1-fsdp.pt.run")[-1]
    model = load_model(checkpoint)
    batch = global_batch(model.config)
    with torch.no_grad():
        for modality, expected in got["embeddings"].items():
            torch.testing.assert_close(model.encode(modality, batch[modality]), expected, atol=1e-6, rtol=1e-5)
    # The optimiser state is keyed by parameter name, whole: any world size can load it.
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)["optimizer"]
    assert "encoders.image.trunk.transformer.blocks.0.attn.qkv.weight" in state["param_groups"][0]["params"]


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("fsdp", "ddp"), ("ddp", "fsdp")])
def test_a_run_on_two_processes_resumes_in_one_across_ddp_and_fsdp(tmp_path, first, then):
    """The one checkpoint format: saved by 2 processes (sharded or not), continued by 1 in the other mode."""
    from tests.training.test_train import ENV, losses_by_step, run_args, tiny_dataset_at

    dataset = tiny_dataset_at(tmp_path / "data")
    pairs = json.dumps([{"name": "pairs", "shards": dataset["spec"], "task": "retrieval", "modality": "image",
                         "gallery_modality": "text"}])
    args = run_args(dataset, tmp_path, 4, ["--distributed", first, "--data.eval", pairs, "--checkpoint_every", "2"])[2:]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(ROOT / "train.py"), *args]
    env = {**ENV, "GLOO_SOCKET_IFNAME": "lo"}
    sharded = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    assert "pairs/image_to_text/recall@1" in sharded.stdout  # under FSDP, on a whole copy of the sharded model

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--output_dir", str(tmp_path), "--run_name", "run",
                              "--resume", "latest", "--distributed", then, "--optim.steps", "6", "--plot", "false"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 4" in resumed.stdout + resumed.stderr
    assert sorted(losses_by_step(tmp_path / "run")) == [1, 2, 3, 4, 5, 6]


def test_ddp_gradients_are_not_averaged_a_second_time(monkeypatch):
    """Under DDP every gradient is averaged by DDP itself: the FSDP-only step must not all-reduce them again."""
    import torch

    from multimodal.training import fsdp

    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    # Two processes, as torch.distributed would report them under DDP; an all-reduce fails the test.
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce",
                        lambda tensor: pytest.fail("a second all-reduce of DDP's gradients"))
    before = model.weight.grad.clone()
    fsdp.average_replicated_gradients(model)
    assert torch.equal(model.weight.grad, before)
