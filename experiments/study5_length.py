"""Study 5: pretraining length. The step checkpoints of study 1's seed-0 pretraining after 25, 50 and 100 % of
one schedule (the learning rate is still high at 25 and 50 %: these are points on one run, not shorter
schedules); linear probe, k-NN and fine-tuning (study 1's budget) from each."""

from __future__ import annotations

import common

FRACTIONS = (0.25, 0.5, 1.0)


def main(argv=None) -> dict:
    args = common.parse_args(__doc__, argv)
    common.setup_logging()
    ctx = common.Context(args)
    seed = ctx.scale.seeds[0]
    tasks = {"pre": lambda: ctx.pretrain({}, seed, need_checkpoints=False)}
    for f in FRACTIONS:
        tasks[f"probe{f:g}"] = lambda f=f: ctx.probe({}, seed, f)
        tasks[f"ft{f:g}"] = lambda f=f: ctx.finetune(seed, ({}, f))
    r = ctx.run_tasks(tasks)

    def val(name, metric):
        return common.mean_std([r[name][metric]] if name in r else [])

    rows = [{"condition": f"{int(f * 100)} % of the schedule", "fraction": f,
             "linprobe": val(f"probe{f:g}", "linprobe_top1"), "knn": val(f"probe{f:g}", "knn_top1"),
             "ft_top1": val(f"ft{f:g}", "top1")} for f in FRACTIONS]
    study = {"title": "Study 5: pretraining length (Fashion-MNIST test top-1, %)", "rows": rows, "seeds": [seed],
             "metrics": {"linprobe": "linear probe top-1", "knn": "k-NN top-1", "ft_top1": "fine-tune top-1"},
             "jobs": r}
    ctx.write_study("study5_length", study, plot)
    return study


def plot(study: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    x = [100 * r["fraction"] for r in study["rows"]]
    for m, label in study["metrics"].items():
        y = [r[m]["mean"] for r in study["rows"]]
        pts = [(a, b) for a, b in zip(x, y) if b is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("pretraining done (% of one schedule)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=7)
    ax.set_title(study["title"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
