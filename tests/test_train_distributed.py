"""The trainer's step on 2 CPU processes (gloo) and with accumulation equals one process over the same global batch.

What is compared is what the claim is about: the loss and the gradients before the
optimiser. They are sums of the same terms in another order, so they agree to fp32
reduction error: a few ulps of the largest term, which is why the tolerance of each
gradient tensor scales with its largest entry. The step itself is checked with SGD
(see tests/_train_step_worker.py), whose update carries the gradients' error times
the learning rate and nothing more.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_train_step_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
from _train_step_worker import SGD_LR  # noqa: E402

# fp32 rounds to 2^-24 (6e-8) of a value; the same sums taken in another order (other
# matmul shapes for micro-batches, another reduction across processes) differ here by up
# to 5e-6 of a tensor's largest gradient. 1e-4 leaves a margin of 20 for other machines'
# kernels, and is still far below what a real fault would cost (a micro-batch missing,
# counted twice or scaled wrongly moves gradients by tens of percent).
RELATIVE_TO_LARGEST = 1e-4


def launch(tmp_path: Path, num_processes: int, accum_steps: int) -> dict:
    output = tmp_path / f"step-{num_processes}-{accum_steps}.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    if num_processes == 1:
        command = [sys.executable, str(WORKER), str(output), str(accum_steps)]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", "0",
            str(WORKER), str(output), str(accum_steps),
        ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(output)


def largest(tensor: torch.Tensor) -> float:
    return float(tensor.abs().max()) if tensor.numel() else 0.0


def assert_close_to_reduction_error(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    atol = RELATIVE_TO_LARGEST * largest(expected) + 1e-12
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4, msg=lambda m: f"{what}: {m}")


@pytest.mark.slow
def test_two_processes_and_accumulation_match_one_process(tmp_path):
    reference = launch(tmp_path, 1, 1)
    assert len(reference["gradients"]) > 30
    for num_processes, accum_steps in ((2, 1), (2, 2), (1, 4)):
        case = f"{num_processes} processes, accum {accum_steps}"
        got = launch(tmp_path, num_processes, accum_steps)
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
