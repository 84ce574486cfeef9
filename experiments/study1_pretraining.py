"""Study 1: does ARM pretraining help? Pretraining + fine-tuning vs fine-tuning from scratch at the same
fine-tuning budget (same labels, steps and recipe, except layer-wise lr decay, which only the pretrained model
gets, as in the demo), and a linear probe and k-NN of the pretrained encoder vs a randomly initialised one.
The row a reader knows: raw pixels, no network (a linear classifier on the same labelled images in the fine-tuning
column, on all training images in the linear-probe column; k-NN on pixel vectors).
Seeds: the scale's (3 at --scale gpu)."""

from __future__ import annotations

import common


def main(argv=None) -> dict:
    args = common.parse_args(__doc__, argv)
    common.setup_logging()
    ctx = common.Context(args)
    seeds = ctx.scale.seeds
    tasks = {}
    for s in seeds:  # interleaved so that several processes find independent work early
        tasks[f"pre{s}"] = lambda s=s: ctx.pretrain({}, s, need_checkpoints=False)
        tasks[f"scratch{s}"] = lambda s=s: ctx.finetune(s, None)
    for s in seeds:
        tasks[f"ft{s}"] = lambda s=s: ctx.finetune(s, ({}, 1.0))
        tasks[f"probe{s}"] = lambda s=s: ctx.probe({}, s, 1.0)
        tasks[f"random{s}"] = lambda s=s: ctx.probe({}, s, None)
        tasks[f"pixels{s}"] = lambda s=s: ctx.pixel_baselines(s)
    r = ctx.run_tasks(tasks)

    def vals(prefix, metric):
        return common.mean_std([r[f"{prefix}{s}"][metric] for s in seeds if f"{prefix}{s}" in r])

    rows = [
        {"condition": "ARM pretrained", "ft_top1": vals("ft", "top1"), "linprobe": vals("probe", "linprobe_top1"),
         "knn": vals("probe", "knn_top1")},
        {"condition": "random init (scratch)", "ft_top1": vals("scratch", "top1"),
         "linprobe": vals("random", "linprobe_top1"), "knn": vals("random", "knn_top1")},
        {"condition": "raw pixels, no network", "ft_top1": vals("pixels", "linear_ft_labels_top1"),
         "linprobe": vals("pixels", "linear_all_top1"), "knn": vals("pixels", "knn_top1")},
    ]
    study = {"title": "Study 1: ARM pretraining vs from scratch (Fashion-MNIST test top-1, %)",
             "metrics": {"ft_top1": "fine-tune top-1", "linprobe": "linear probe top-1", "knn": "k-NN top-1"},
             "rows": rows, "seeds": list(seeds), "jobs": r}
    ctx.write_study("study1_pretraining", study, common.bar_plot)
    return study


if __name__ == "__main__":
    main()
