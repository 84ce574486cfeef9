"""Study 2: the prediction unit. Clusters of 1x1 (single patches), 2x2 and 4x4 patches on the same 8x8 patch
grid (64, 16 and 4 clusters), the same encoder and schedule; frozen-feature linear probe and k-NN of each."""

from __future__ import annotations

import common

CONDITIONS = {"1 patch": {"cluster_size": 1}, "2x2 patches": {"cluster_size": 2}, "4x4 patches": {"cluster_size": 4}}
NAME, TITLE = "study2_unit", "Study 2: prediction unit (Fashion-MNIST test top-1, %)"


def run_conditions(argv, conditions: dict, name: str, title: str, doc: str = __doc__) -> dict:
    """Pretrain each condition (ablation seeds), probe it; shared by studies 2-4."""
    args = common.parse_args(doc, argv)
    common.setup_logging()
    ctx = common.Context(args)
    seeds = ctx.scale.ablation_seeds if not args.seeds else ctx.scale.seeds
    skipped = {label: f"does not fit the {common.grid_side(ctx.scale)}x{common.grid_side(ctx.scale)} patch grid "
                      f"of --scale {args.scale}" for label, cond in conditions.items() if not _fits(ctx.scale, cond)}
    conditions = {k: v for k, v in conditions.items() if k not in skipped}
    tasks = {}
    for label, cond in conditions.items():
        for s in seeds:
            tasks[f"{label}|pre{s}"] = lambda c=cond, s=s: ctx.pretrain(c, s, need_checkpoints=False)
    for label, cond in conditions.items():
        for s in seeds:
            tasks[f"{label}|probe{s}"] = lambda c=cond, s=s: ctx.probe(c, s, 1.0)
    r = ctx.run_tasks(tasks)

    def vals(label, kind, metric):
        return common.mean_std([r[f"{label}|{kind}{s}"][metric] for s in seeds if f"{label}|{kind}{s}" in r])

    rows = [{"condition": label, "linprobe": vals(label, "probe", "linprobe_top1"),
             "knn": vals(label, "probe", "knn_top1"), "loss": vals(label, "pre", "loss_last")}
            for label in conditions]
    rows += [{"condition": label, "skipped": why} for label, why in skipped.items()]
    study = {"title": title, "rows": rows, "seeds": list(seeds), "conditions": conditions, "jobs": r,
             "metrics": {"linprobe": "linear probe top-1", "knn": "k-NN top-1", "loss": "final pretraining loss"}}
    ctx.write_study(name, study, common.bar_plot)
    return study


def main(argv=None) -> dict:
    return run_conditions(argv, CONDITIONS, NAME, TITLE)


def _fits(scale: common.Scale, cond: dict) -> bool:
    """A cluster size the scale's patch grid divides into at least two clusters."""
    side, c = common.grid_side(scale), cond.get("cluster_size", common.BASE["cluster_size"])
    return side % c == 0 and (side // c) ** 2 >= 2


if __name__ == "__main__":
    main()
