"""Study 6: does ARM pretraining help a Vim too? The paper pretrains Vim (bidirectional Mamba blocks without an MLP,
a middle class token) as well as its MambaMLP and reports that ARM helps both. The same study as study 1 on a small
Vim of study 1's geometry (same image size, patches, width, depth and state size; Vim's blocks: expand 2, no MLP;
as a classifier two scan directions and the class token as the feature) and schedule (the fmnist presets, the
scale's epochs, batches and labels): ARM-pretrained and fine-tuned vs the same Vim fine-tuned from scratch at the
same budget (layer-wise lr decay only for the pretrained one, as in study 1), a linear probe and k-NN of the
pretrained encoder (ARM's forward-only Vim blocks, mean of the patch tokens) vs a randomly initialised one, and
the raw-pixel rows. Weight decay: the reference rule (optim.no_decay reference: hustvl/Vim's and the ARM code's
optimizers exempt only 1-D parameters, biases, pos_embed and cls_token). Beside it, study 1's MambaMLP rows under the
same rule (the same jobs, shared). Seeds: the scale's (3 at --scale gpu)."""

from __future__ import annotations

import common

RULE = "reference"


def main(argv=None) -> dict:
    args = common.parse_args(__doc__, argv)
    common.setup_logging()
    ctx = common.Context(args)
    seeds = ctx.scale.seeds
    tasks = {}
    # Vim's jobs first, interleaved so that several processes find independent work early; study 1's MambaMLP jobs
    # under the same rule (run by study 1 first in run_gpu.sh) after them
    for fam in ("vim", "arm"):
        for s in seeds:
            tasks[f"{fam}-pre{s}"] = lambda s=s, f=fam: ctx.pretrain({}, s, need_checkpoints=False, no_decay=RULE,
                                                                     family=f)
            tasks[f"{fam}-scratch{s}"] = lambda s=s, f=fam: ctx.finetune(s, None, no_decay=RULE, family=f)
        for s in seeds:
            tasks[f"{fam}-ft{s}"] = lambda s=s, f=fam: ctx.finetune(s, ({}, 1.0), no_decay=RULE, family=f)
            tasks[f"{fam}-probe{s}"] = lambda s=s, f=fam: ctx.probe({}, s, 1.0, no_decay=RULE, family=f)
        for s in seeds:
            tasks[f"{fam}-random{s}"] = lambda s=s, f=fam: ctx.probe({}, s, None, family=f)
    for s in seeds:
        tasks[f"pixels{s}"] = lambda s=s: ctx.pixel_baselines(s)
    r = ctx.run_tasks(tasks)

    def vals(prefix, metric):
        return common.over_seeds(r, prefix, metric, seeds)

    rows = []
    for fam, label in (("vim", "Vim"), ("arm", "MambaMLP (study 1)")):
        rows.append({"condition": f"{label}: ARM pretrained", "family": fam, "no_decay": RULE,
                     "ft_top1": vals(f"{fam}-ft", "top1"), "linprobe": vals(f"{fam}-probe", "linprobe_top1"),
                     "knn": vals(f"{fam}-probe", "knn_top1"), "loss": vals(f"{fam}-pre", "loss_last")})
        rows.append({"condition": f"{label}: random init (scratch)", "family": fam, "no_decay": RULE,
                     "ft_top1": vals(f"{fam}-scratch", "top1"), "linprobe": vals(f"{fam}-random", "linprobe_top1"),
                     "knn": vals(f"{fam}-random", "knn_top1")})
    rows.append(common.pixel_row(r, seeds))
    study = {"title": "Study 6: ARM pretraining of a Vim vs from scratch, beside MambaMLP (Fashion-MNIST test top-1, %)",
             "metrics": {"ft_top1": "fine-tune top-1", "linprobe": "linear probe top-1", "knn": "k-NN top-1"},
             "rows": rows, "seeds": list(seeds), "no_decay": RULE, "jobs": r}
    ctx.write_study("study6_vim", study, common.bar_plot)
    return study


if __name__ == "__main__":
    main()
