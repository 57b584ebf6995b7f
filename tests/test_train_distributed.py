"""train.py's step on 2 CPU processes (gloo) equals one process over the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_train_step_worker.py"


def launch(tmp_path: Path, num_processes: int, accum_steps: int) -> dict:
    output = tmp_path / f"params-{num_processes}-{accum_steps}.pt"
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


@pytest.mark.slow
def test_two_processes_and_accumulation_match_one_process(tmp_path):
    reference = launch(tmp_path, 1, 1)
    for num_processes, accum_steps in ((2, 1), (2, 2), (1, 4)):
        got = launch(tmp_path, num_processes, accum_steps)
        torch.testing.assert_close(got["loss"], reference["loss"], atol=1e-5, rtol=1e-5)
        for name, value in reference["state"].items():
            torch.testing.assert_close(got["state"][name], value, atol=2e-6, rtol=1e-4, msg=f"{name} ({num_processes} processes, accum {accum_steps})")
