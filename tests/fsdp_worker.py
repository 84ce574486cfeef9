"""Run by test_train_fsdp.py, under torchrun or alone: one tiny pretraining run (``parallel`` from the
overrides); rank 0 then writes the whole model's weights and the summary, so the test can compare runs.

``crash_at_save=N`` (third argument): every process exits hard (os._exit) in the middle of its N-th
sharded save, after the shards are written and before the checkpoint is complete."""

import faulthandler
import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from armvision.train import Trainer, distributed, load_config, sharded


def main() -> None:
    faulthandler.enable(all_threads=True)  # a fatal signal (SIGABRT, SIGSEGV) prints every thread's stack
    overrides, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    crash_at = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if crash_at:
        real_save, calls = sharded.dcp.save, []

        def save_then_die(*args, **kwargs):
            real_save(*args, **kwargs)
            calls.append(1)
            if len(calls) == crash_at:
                os._exit(3)

        sharded.dcp.save = save_then_die
    trainer = Trainer(load_config("fmnist_pretrain", overrides, task="pretrain"))
    summary = trainer.fit()
    sd = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # whether the steps ran compiled (a compiler failure falls back to eager with a warning)
    summary["ran_compiled"] = trainer.train_module.is_compiled and trainer.train_module.verified
    if trainer.is_main:
        save_file({k: v.contiguous() for k, v in sd.items()}, out / "model.safetensors")
        (out / "summary.json").write_text(json.dumps(summary))
    distributed.teardown()


if __name__ == "__main__":
    main()
    # Leave without the interpreter's finalization: after fully_shard, the gloo process group and its threads
    # outlive destroy_process_group (torch 2.14; a device mesh alone does not), and their destruction while Python
    # shuts down can abort the process after the run's outputs were written (SIGABRT, "terminate called without
    # an active exception": once in CI, most likely this). Everything this worker writes is closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
