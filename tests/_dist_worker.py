"""One process of the two-process loss test in ``test_losses_distributed.py``.

Run as ``python tests/_dist_worker.py RANK WORLD_SIZE INIT_FILE INPUTS OUTPUT``: joins a
gloo process group through INIT_FILE, takes its rank's rows of the global batch in
INPUTS, computes each case's contrastive loss with features gathered across processes,
and saves its loss and its (not yet averaged) gradients to OUTPUT.
"""
import datetime
import gc
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from multimodal.losses import contrastive_loss


def run_case(case: dict, inputs: dict, rank: int, world_size: int) -> dict:
    local_batch = next(iter(inputs.values())).shape[0] // world_size
    rows = slice(rank * local_batch, (rank + 1) * local_batch)
    weights = {m: w.clone().requires_grad_() for m, w in case["weights"].items()}
    log_scales = {p: s.clone().requires_grad_() for p, s in case["log_scales"].items()}
    biases = {p: b.clone().requires_grad_() for p, b in case["biases"].items()} if case["biases"] is not None else None
    features = {m: F.normalize(x[rows] @ weights[m].T, dim=-1) for m, x in inputs.items()}  # (b, E)
    groups = case.get("groups")
    total, per_pair = contrastive_loss(features, log_scales, biases, kind=case["kind"],
                                       groups=None if groups is None else groups[rows])
    total.backward()
    result = {"loss": total.detach(), "per_pair": per_pair}
    result.update({f"weight.{m}": w.grad for m, w in weights.items()})
    result.update({f"log_scale.{p}": s.grad for p, s in log_scales.items()})
    if biases is not None:
        result.update({f"bias.{p}": b.grad for p, b in biases.items()})
    return result


def main(argv: list[str]) -> None:
    rank, world_size = int(argv[0]), int(argv[1])
    init_file, inputs_path, output_path = argv[2:5]
    torch.set_num_threads(1)
    # A short timeout: if one rank fails, the other stops waiting for it instead of hanging.
    # A device-mapped backend, as Accelerate sets up a CPU run (get_backend() says
    # "undefined"): gloo, which has no all_to_all, serves its CPU tensors.
    dist.init_process_group(
        "cpu:gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        setup = torch.load(inputs_path)
        results = [run_case(case, setup["inputs"], rank, world_size) for case in setup["cases"]]
        torch.save(results, output_path)
    finally:
        # Autograd nodes of the gathers hold the process group; if one survives into
        # interpreter shutdown, gloo's destructor aborts the process.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
