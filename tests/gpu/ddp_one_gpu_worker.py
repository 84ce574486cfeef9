"""Run by test_ddp_cudagraphs_gpu.py under torchrun: 2 processes share the one GPU (gloo moves CUDA tensors
through the host; NCCL refuses two ranks on one device), so DDP with CUDA graphs can be checked for correctness
on a one-GPU machine. Not a speed measurement: the processes take turns on the card."""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from armvision.train import Trainer, distributed, load_config


def main() -> None:
    overrides, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    os.environ["LOCAL_RANK"] = "0"  # both processes on cuda:0
    dist.init_process_group(backend="gloo")  # before the Trainer, which then joins this group
    trainer = Trainer(load_config("fmnist_pretrain", overrides, task="pretrain"))
    summary = trainer.fit()
    summary["ran_compiled"] = trainer.train_module.is_compiled and trainer.train_module.verified
    summary["cudagraphs"] = trainer.train_module.cudagraphs
    summary["ddp"] = trainer.ddp is not None
    if trainer.is_main:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainer.model.state_dict().items()},
                  out / "model.safetensors")
        (out / "summary.json").write_text(json.dumps(summary))
    distributed.teardown()


if __name__ == "__main__":
    main()
