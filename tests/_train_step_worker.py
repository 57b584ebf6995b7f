"""One training step of the trainer's step functions on a fixed global batch.

Run as ``torchrun --nproc_per_node W tests/_train_step_worker.py OUTPUT ACCUM [ddp|fsdp]``
(or plainly with python for one process): every process takes its rank's rows of the
same global batch of 8 and splits them into ACCUM micro-batches. The main process saves
to OUTPUT the loss and the gradients the trainer's ``compute_gradients`` left (summed
over micro-batches, averaged over processes), then the parameters after the trainer's
``optimizer_step`` with plain SGD: a step that is linear in the gradients, so its
result carries no more rounding than they do (Adam's first step divides by the
gradients' magnitude and turns the rounding of near-zero gradients into steps of the
order of the learning rate).

With ``fsdp`` the model is sharded as ``--distributed fsdp`` shards it; the gradients
and weights saved are gathered whole, the trainer saves a training checkpoint under
OUTPUT's name + ``.run``, and the main process also saves the sharded model's
embeddings of a fixed batch, to compare with the checkpoint loaded in one process.
"""
import gc
import os
import sys
from pathlib import Path

import torch

from multimodal.training.optimizer import cosine_with_warmup
from multimodal.training.run_checkpoints import save_training_checkpoint
from multimodal.training.step import compute_gradients, optimizer_step
from multimodal.training.optimizer import OptimConfig
from multimodal.training.train_config import TrainConfig
from multimodal.training.fsdp import full_model_state, full_tensor, shard_model
from multimodal.model import MultimodalModel
from multimodal.presets import tiny

GLOBAL_BATCH = 8
SGD_LR = 0.1


def global_batch(config) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.text.vocab_size, (GLOBAL_BATCH, config.text.context_length), generator=generator)
    ids[:, -1] = config.text.eot_token_id
    images = torch.randn(GLOBAL_BATCH, 3, config.image.image_size, config.image.image_size, generator=generator)
    # Class labels: rows of one label are positives of each other, across micro-batches and processes.
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    return {"text": ids, "image": images, "label": labels}


def run(output: str, accum_steps: int, distributed: str) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(0)
    config = tiny(["text", "image"])
    model = MultimodalModel(config)
    optim = OptimConfig(lr=SGD_LR, warmup_steps=1, steps=10, accum_steps=accum_steps)
    if distributed == "fsdp":
        shard_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(optim))
    if distributed == "fsdp":
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    batch = global_batch(config)
    per_rank = GLOBAL_BATCH // accelerator.num_processes
    start = accelerator.process_index * per_rank
    local = {k: v[start : start + per_rank] for k, v in batch.items()}
    size = per_rank // accum_steps
    micro_batches = [{k: v[i * size : (i + 1) * size] for k, v in local.items()} for i in range(accum_steps)]

    loss, _ = compute_gradients(accelerator, model, micro_batches)
    gradients = {name: full_tensor(p.grad).detach().clone() for name, p in unwrapped.named_parameters()
                 if p.grad is not None}
    optimizer_step(accelerator, model, optimizer, scheduler, grad_clip=1.0)
    mean_loss = accelerator.reduce(loss, reduction="mean")
    state = full_model_state(unwrapped) if distributed == "fsdp" else unwrapped.state_dict()
    result = {"loss": mean_loss, "gradients": gradients, "state": {k: v.detach().clone() for k, v in state.items()}}
    if distributed == "fsdp":
        save_training_checkpoint(accelerator, model, optimizer, scheduler, None, TrainConfig(model=config),
                                 Path(output + ".run"), 1)
        model.eval()
        with torch.no_grad():
            result["embeddings"] = {m: model.encode(m, batch[m]).detach() for m in ("text", "image")}
    assert accelerator.num_processes == int(os.environ.get("WORLD_SIZE", "1")), "the processes did not join"
    result["num_processes"] = accelerator.num_processes
    if accelerator.is_main_process:
        torch.save(result, output)
    accelerator.wait_for_everyone()
    del loss, model
    gc.collect()
    accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "ddp")
