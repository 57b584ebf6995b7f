"""One optimiser step of train.py's step functions on a fixed global batch.

Run as ``accelerate launch --cpu --num_processes W tests/_train_step_worker.py OUTPUT ACCUM``
(or plainly with python for one process): every process takes its rank's rows of the
same global batch of 8, splits them into ACCUM micro-batches, computes gradients and
steps; the main process saves the parameters after the step to OUTPUT.
"""
import gc
import sys

import torch

from multimodal import train
from multimodal.model import MultimodalModel
from multimodal.presets import tiny

GLOBAL_BATCH = 8


def global_batch(config) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.text.vocab_size, (GLOBAL_BATCH, config.text.context_length), generator=generator)
    ids[:, -1] = config.text.eot_token_id
    images = torch.randn(GLOBAL_BATCH, 3, config.image.image_size, config.image.image_size, generator=generator)
    return {"text": ids, "image": images}


def run(output: str, accum_steps: int) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(0)
    config = tiny(["text", "image"])
    model = MultimodalModel(config)
    optim = train.OptimConfig(lr=1e-3, warmup_steps=1, steps=10, accum_steps=accum_steps)
    optimizer = train.build_optimizer(model, optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, train.cosine_with_warmup(optim))
    model, optimizer = accelerator.prepare(model, optimizer)

    batch = global_batch(config)
    per_rank = GLOBAL_BATCH // accelerator.num_processes
    start = accelerator.process_index * per_rank
    local = {k: v[start : start + per_rank] for k, v in batch.items()}
    size = per_rank // accum_steps
    micro_batches = [{k: v[i * size : (i + 1) * size] for k, v in local.items()} for i in range(accum_steps)]

    loss, _ = train.compute_gradients(accelerator, model, micro_batches)
    train.optimizer_step(accelerator, model, optimizer, scheduler, grad_clip=1.0)
    mean_loss = accelerator.reduce(loss, reduction="mean")
    if accelerator.is_main_process:
        state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        torch.save({"state": state, "loss": mean_loss}, output)
    accelerator.wait_for_everyone()
    del loss, model
    gc.collect()
    accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
