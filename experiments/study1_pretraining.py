"""Study 1: does ARM pretraining help? Pretraining + fine-tuning vs fine-tuning from scratch at the same
fine-tuning budget (same labels, steps and recipe, except layer-wise lr decay, which only the pretrained model
gets, as in the demo), and a linear probe and k-NN of the pretrained encoder vs a randomly initialised one.
The row a reader knows: raw pixels, no network (a linear classifier on the same labelled images in the fine-tuning
column, on all training images in the linear-probe column; k-NN on pixel vectors).
Each network row twice, by weight decay rule (optim.no_decay, in pretraining and fine-tuning alike): "Mamba-style wd"
(A_log, D, position embeddings and tokens exempt: the rule of every job before the rule was a choice, whose keys
carry no tag) and "reference wd" (the ARM code's: only 1-D parameters, biases, pos_embed and cls_token exempt; job
keys tagged -wdref). The randomly initialised encoder is not trained: both rules share its probe.
Seeds: the scale's (3 at --scale gpu)."""

from __future__ import annotations

import common


def main(argv=None) -> dict:
    args = common.parse_args(__doc__, argv)
    common.setup_logging()
    ctx = common.Context(args)
    seeds = ctx.scale.seeds
    tasks = {}
    for rule in common.NO_DECAY:  # the old rule's jobs first: they are done at --scale gpu
        tag = common.wd_tag(rule)
        for s in seeds:  # interleaved so that several processes find independent work early
            tasks[f"pre{tag}{s}"] = lambda s=s, r=rule: ctx.pretrain({}, s, need_checkpoints=False, no_decay=r)
            tasks[f"scratch{tag}{s}"] = lambda s=s, r=rule: ctx.finetune(s, None, no_decay=r)
        for s in seeds:
            tasks[f"ft{tag}{s}"] = lambda s=s, r=rule: ctx.finetune(s, ({}, 1.0), no_decay=r)
            tasks[f"probe{tag}{s}"] = lambda s=s, r=rule: ctx.probe({}, s, 1.0, no_decay=r)
    for s in seeds:
        tasks[f"random{s}"] = lambda s=s: ctx.probe({}, s, None)
        tasks[f"pixels{s}"] = lambda s=s: ctx.pixel_baselines(s)
    r = ctx.run_tasks(tasks)

    def vals(prefix, metric):
        return common.over_seeds(r, prefix, metric, seeds)

    rows = []
    for rule, label in (("mamba", "Mamba-style wd"), ("reference", "reference wd")):
        tag = common.wd_tag(rule)
        rows.append({"condition": f"ARM pretrained, {label}", "no_decay": rule, "ft_top1": vals(f"ft{tag}", "top1"),
                     "linprobe": vals(f"probe{tag}", "linprobe_top1"), "knn": vals(f"probe{tag}", "knn_top1")})
    for rule, label in (("mamba", "Mamba-style wd"), ("reference", "reference wd")):
        rows.append({"condition": f"random init (scratch), {label}", "no_decay": rule,
                     "ft_top1": vals(f"scratch{common.wd_tag(rule)}", "top1"),
                     "linprobe": vals("random", "linprobe_top1"), "knn": vals("random", "knn_top1")})
    rows.append(common.pixel_row(r, seeds))
    study = {"title": "Study 1: ARM pretraining vs from scratch (Fashion-MNIST test top-1, %)",
             "metrics": {"ft_top1": "fine-tune top-1", "linprobe": "linear probe top-1", "knn": "k-NN top-1"},
             "rows": rows, "seeds": list(seeds), "jobs": r}
    ctx.write_study("study1_pretraining", study, common.bar_plot)
    return study


if __name__ == "__main__":
    main()
