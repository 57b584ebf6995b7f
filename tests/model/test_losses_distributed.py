"""The gathered (local-loss) contrastive losses on two CPU processes equal one process on the whole batch,
with CLIP's positives and with class-label groups.

Two gloo processes on the loopback interface each hold half of a global batch of three
modalities, projected by small linear maps. Averaging their losses and gradients (what
DDP does to gradients) must give the loss and gradients of one process on the
concatenated batch: for the projections, the log scales and the sigmoid biases.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._dist_worker import run_case

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parents[1] / "_dist_worker.py"
WORLD_SIZE = 2
PAIRS = ("text_image", "text_audio", "image_audio")


def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if not names:
        pytest.skip("no loopback network interface to run gloo on")
    return names[0]


def _setup(global_batch=8, input_dim=5, embed_dim=3):
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    inputs = {m: randn(global_batch, input_dim) for m in ("text", "image", "audio")}
    cases = []
    # Without groups (CLIP's positives), then with class labels as groups (UniCL's positives).
    for kind, groups in (("infonce", None), ("sigmoid", None), ("infonce", [0, 1, 0, 2, 1, 0, 3, 2]),
                         ("sigmoid", [0, 1, 0, 2, 1, 0, 3, 2])):
        cases.append({
            "kind": kind,
            "groups": None if groups is None else torch.tensor(groups),
            "weights": {m: randn(embed_dim, input_dim) for m in inputs},
            "log_scales": {p: torch.tensor(1.0 + i, dtype=torch.float64) for i, p in enumerate(PAIRS)},
            "biases": {p: torch.tensor(-1.0 - i, dtype=torch.float64) for i, p in enumerate(PAIRS)}
            if kind == "sigmoid" else None,
        })
    return {"inputs": inputs, "cases": cases}


def _run_workers(tmp_path, setup):
    inputs_path = tmp_path / "inputs.pt"
    torch.save(setup, inputs_path)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "GLOO_SOCKET_IFNAME": _loopback_interface(),
        "OMP_NUM_THREADS": "1",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD_SIZE), str(tmp_path / "init"), str(inputs_path),
             str(tmp_path / f"rank{rank}.pt")],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=120)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.slow  # two fresh Python processes importing torch: ~5 s on 2 cores
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    setup = _setup()
    ranks = _run_workers(tmp_path, setup)
    for case_index, case in enumerate(setup["cases"]):
        expected = run_case(case, setup["inputs"], rank=0, world_size=1)  # the whole batch in one process
        per_rank = [rank_results[case_index] for rank_results in ranks]
        kind = case["kind"]
        # each rank's loss covers only its rows: they differ, and their mean is the global loss
        assert not torch.isclose(per_rank[0]["loss"], per_rank[1]["loss"])
        mean_loss = sum(r["loss"] for r in per_rank) / WORLD_SIZE
        torch.testing.assert_close(mean_loss, expected["loss"], rtol=1e-10, atol=0, msg=f"{kind} loss")
        for pair in PAIRS:
            mean_pair = sum(r["per_pair"][pair] for r in per_rank) / WORLD_SIZE
            torch.testing.assert_close(mean_pair, expected["per_pair"][pair], rtol=1e-10, atol=0, msg=f"{kind} {pair}")
        gradient_names = [name for name in expected if "." in name]
        assert len(gradient_names) == (9 if kind == "sigmoid" else 6)
        for name in gradient_names:
            averaged = sum(r[name] for r in per_rank) / WORLD_SIZE  # DDP: sum over ranks / W
            torch.testing.assert_close(averaged, expected[name], rtol=1e-9, atol=1e-12, msg=f"{kind} {name}")
