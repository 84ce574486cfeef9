"""Write docs/results.md from the study JSON files in docs/results/ (tables, plots, commands, and per study what
the paper found next to what came out here). Numbers come only from the JSON files; a study that has not run
yet is marked "to be filled by the GPU run"."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common

STUDIES = [
    ("study1_pretraining", "The paper: ARM-B fine-tuned after pretraining reaches 83.2 % on ImageNet-1K vs 81.2 % "
     "for the same architecture trained supervised from scratch (+2.0 points).",
     ("ARM pretrained, Mamba-style wd", "random init (scratch), Mamba-style wd", "ft_top1", "fine-tuning")),
    ("study2_unit", "The paper: a cluster of 4x4 patches is the best prediction unit, better than a single patch.",
     ("4x4 patches", "1 patch", "linprobe", "linear probe")),
    ("study3_order", "The paper: row-major order is best; a random order is much worse.",
     ("row-major", "random", "linprobe", "linear probe")),
    ("study4_target", "The paper: per-patch normalised pixels beat raw pixels as the target.",
     ("normalised pixels", "raw pixels", "linprobe", "linear probe")),
    ("study5_length", "The paper pretrains for 1600 epochs and reports that longer pretraining helps (MAE-style "
     "schedules); it gives no curve for ARM.", ("100 % of the schedule", "25 % of the schedule", "linprobe",
                                                  "linear probe")),
    ("study6_vim", "The paper: ARM pretraining helps Vim as well as its MambaMLP backbone (its second backbone).",
     ("Vim: ARM pretrained", "Vim: random init (scratch)", "ft_top1", "fine-tuning")),
]


# study 1's rows before they were split by weight decay rule: those runs used the Mamba-style rule
OLD_STUDY1_NAMES = {"ARM pretrained": "ARM pretrained, Mamba-style wd",
                    "random init (scratch)": "random init (scratch), Mamba-style wd"}


def rows_by_condition(study: dict) -> dict[str, dict]:
    """A study's rows by condition; study 1's names from before its split by weight decay rule mapped to the new
    ones."""
    return {OLD_STUDY1_NAMES.get(r["condition"], r["condition"]): r for r in study["rows"]}


def weight_decay_effect(study: dict) -> str:
    """Study 1's pretrained and scratch rows under the reference's weight decay against the Mamba-style rule."""
    rows = rows_by_condition(study)
    parts = []
    for who in ("ARM pretrained", "random init (scratch)"):
        ref, old = (rows.get(f"{who}, reference wd") or {}), (rows.get(f"{who}, Mamba-style wd") or {})
        a, b = (ref.get("ft_top1") or {}), (old.get("ft_top1") or {})
        if a.get("mean") is None or b.get("mean") is None:
            return ("Weight decay as the reference (A_log and ar_token decayed) vs Mamba-style (exempt): "
                    "to be filled by the GPU run.")
        n = min(a["n"], b["n"])
        noise = max(a["std"], b["std"]) * (2 / max(n, 1)) ** 0.5
        verdict = "within" if abs(a["mean"] - b["mean"]) <= 2 * noise else "beyond"
        parts.append(f"{who} {a['mean']:.2f} vs {b['mean']:.2f} fine-tuning top-1 ({a['mean'] - b['mean']:+.2f}; "
                     f"noise of the difference about {noise:.2f}, n={n}: {verdict} twice the noise)")
    return ("Weight decay as the reference (A_log and ar_token decayed) vs Mamba-style (exempt): "
            + "; ".join(parts) + ".")


def compare(study: dict, a: str, b: str, metric: str, what: str, yardstick: float | None = None) -> str:
    """One sentence: a vs b on ``metric``, and whether the difference is beyond the seed noise. The noise of a
    difference of two means over n seeds each is std * sqrt(2 / n); "beyond the noise" means more than twice that.
    The std is the larger of the two rows' (n > 1), else ``yardstick`` (study 1's seed std of the same metric)."""
    rows = rows_by_condition(study)
    ra, rb = (rows.get(a) or {}).get(metric) or {}, (rows.get(b) or {}).get(metric) or {}
    skipped = [c for c in (a, b) if (rows.get(c) or {}).get("skipped")]
    if skipped:
        return f"Here: {', '.join(skipped)} not run at this scale ({rows[skipped[0]]['skipped']})."
    if ra.get("mean") is None or rb.get("mean") is None:
        return f"Here: {a} vs {b} ({what}): to be filled by the GPU run."
    d = ra["mean"] - rb["mean"]
    n = min(ra.get("n", 0), rb.get("n", 0))
    std, source = max(ra.get("std") or 0.0, rb.get("std") or 0.0), f"std over {n} seeds"
    if n < 2:
        if yardstick is None:
            return (f"Here: {a} {ra['mean']:.2f} vs {b} {rb['mean']:.2f} {what} top-1 ({d:+.2f} points), one seed "
                    "per condition and no seed spread to judge it by: no conclusion.")
        std, source = yardstick, "one seed per condition; study 1's seed std of this metric"
    noise = std * (2 / max(n, 1)) ** 0.5
    head = (f"Here: {a} {ra['mean']:.2f} vs {b} {rb['mean']:.2f} {what} top-1 ({d:+.2f} points; {source} "
            f"{std:.2f}, so the noise of the difference is about {noise:.2f}).")
    if abs(d) <= 2 * noise:
        return head + " The difference is within twice the noise: this run neither confirms nor contradicts the paper."
    agree = "agrees with" if d > 0 else "disagrees with"
    return head + f" The difference is beyond twice the noise and its direction {agree} the paper's."


def against_pixels(study: dict) -> str:
    """Study 1's pretrained encoder against the row without a network, metric by metric."""
    rows = rows_by_condition(study)
    arm, pix = rows.get("ARM pretrained, Mamba-style wd") or {}, rows.get("raw pixels, no network") or {}
    parts = []
    for m, label in (("ft_top1", "fine-tuned vs a linear classifier on the same labelled pixels"),
                     ("linprobe", "linear probe vs a linear classifier on all training pixels"),
                     ("knn", "k-NN on features vs on pixels")):
        a, p = (arm.get(m) or {}).get("mean"), (pix.get(m) or {}).get("mean")
        if a is not None and p is not None:
            parts.append(f"{label} {a:.2f} vs {p:.2f} ({a - p:+.2f})")
    if not parts:
        return "Against raw pixels: to be filled by the GPU run."
    rnd = rows.get("random init (scratch), Mamba-style wd") or {}
    below = [m for m in ("linprobe", "knn") if (rnd.get(m) or {}).get("mean") is not None
             and (pix.get(m) or {}).get("mean") is not None and rnd[m]["mean"] < pix[m]["mean"]]
    tail = (" The randomly initialised encoder, frozen, is below raw pixels (" + ", ".join(below) + ")."
            if below else "")
    return ("Against raw pixels (no network; the baseline a reader knows for Fashion-MNIST): the ARM encoder "
            + "; ".join(parts) + "." + tail)


def yardstick(res: Path, metric: str) -> float | None:
    """Study 1's seed std of ``metric`` for the pretrained model (the noise scale of one-seed comparisons)."""
    path = res / "study1_pretraining.json"
    if not path.is_file():
        return None
    rows = rows_by_condition(json.loads(path.read_text()))
    v = (rows.get("ARM pretrained, Mamba-style wd") or {}).get(metric) or {}
    return v.get("std") if v.get("n", 0) > 1 else None


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default=str(common.REPO / "docs" / "results"))
    p.add_argument("--output", default=str(common.REPO / "docs" / "results.md"))
    args = p.parse_args(argv)
    res = Path(args.results)
    s = common.SCALES["gpu"]
    lines = [
        "# Results: does ARM work, at a scale one can rerun?",
        "",
        "Generated by `python experiments/make_results_md.py` from `docs/results/*.json` (written by the study "
        "scripts); do not edit by hand. Numbers are Fashion-MNIST test top-1 (%) over the 10000 test images.",
        "",
        "Setup (`--scale gpu`): Fashion-MNIST upsampled to "
        f"{s.img_size} px, grayscale, {s.model['patch_size']} px patches ({s.img_size // s.model['patch_size']}x"
        f"{s.img_size // s.model['patch_size']} grid), encoder {s.model['embed_dim']} wide x {s.model['depth']} blocks "
        f"(d_state {s.model['d_state']}), decoder {s.model['decoder_dim']} wide; pretraining {s.pre_epochs} epochs of "
        f"the 60000 training images (batch {s.pre_batch}, no labels); fine-tuning on {s.ft_labels} labelled images for "
        f"{s.ft_epochs} epochs (batch {s.ft_batch}, the fmnist_finetune preset otherwise); linear probe: "
        f"BatchNorm(affine=False) + Linear on frozen pooled features, SGD, lrs {list(s.probe_lrs)}, "
        f"{s.probe_epochs} epochs, lr chosen on 10 % of the training features held out; k-NN: k=20, cosine, T=0.07. "
        "Baseline condition of every ablation: clusters of 2x2 patches, row-major order, normalised-pixel target "
        f"(study 1's pretrainings, shared); seeds: {len(s.seeds)} for study 1 and {len(s.ablation_seeds)} for each "
        "ablation condition (the seed sets the initialisation and the data order; the random cluster order is one "
        "fixed permutation, order_seed 0, in every seed).",
        "",
        "Commands: `bash experiments/run_gpu.sh 540` (all studies over the visible GPUs, resumable; run again to "
        "continue), or one study: `python experiments/study1_pretraining.py --scale gpu` (likewise study2_unit, "
        "study3_order, study4_target, study5_length, study6_vim). Study 6's Vim has study 1's geometry with Vim's "
        "blocks (expand 2, no MLP; as a classifier two scan directions and the middle class token).",
        "",
    ]
    if (res / "visualize_grid.png").is_file():
        lines += ["## What the model predicts", "",
                  "Study 1's seed-0 ARM on one test image per class (`python experiments/visualize_grid.py --scale "
                  "gpu`, the code of `armvision visualize`): the input, the per-patch normalised targets, the one-step "
                  "predictions (true patch statistics) and the fully autoregressive completion from the first "
                  "cluster (outlined; statistics of the clusters known so far). The one-step predictions are close "
                  "to the images; the completion from one 2x2-patch corner (mostly background) stays near the mean "
                  "of the data, as a model trained with a squared error to predict one step ahead does.", "",
                  "![what ARM predicts](results/visualize_grid.png)", ""]
    for name, paper, (a, b, metric, what) in STUDIES:
        path = res / f"{name}.json"
        title = name
        if path.is_file():
            study = json.loads(path.read_text())
            title = study["title"]
            jobs = study.get("jobs", {})
            secs = sum(j.get("job_seconds", 0) for j in jobs.values())
            cards: dict[str, int] = {}
            for j in jobs.values():
                card = j.get("gpu") or "CPU"
                cards[card] = cards.get(card, 0) + 1
            gpu = ", ".join(f"{n} on {c}" for c, n in sorted(cards.items())) if len(cards) > 1 else \
                "on " + (study.get("gpu") or next(iter(cards), "CPU"))
            lines += [f"## {title}", "", common.format_table(study), "",
                      f"Seeds: {study.get('seeds')}; {len(jobs)} jobs ({gpu}), {secs / 60:.1f} min of job time "
                      "(jobs shared with other studies are counted in each); scale "
                      f"`{study.get('scale')}`, written {study.get('written')}.", ""]
            if (res / f"{name}.png").is_file():
                lines += [f"![{title}](results/{name}.png)", ""]
            lines += [paper + " " + compare(study, a, b, metric, what, yardstick(res, metric)), ""]
            if name == "study6_vim":
                lines += [compare(study, "Vim: ARM pretrained", "Vim: random init (scratch)", "linprobe",
                                  "linear probe"), "",
                          compare(study, "MambaMLP (study 1): ARM pretrained",
                                  "MambaMLP (study 1): random init (scratch)", "ft_top1", "fine-tuning"), ""]
            if name == "study1_pretraining":
                lines += [compare(study, "ARM pretrained, reference wd", "random init (scratch), reference wd", metric,
                                  what), "", weight_decay_effect(study), "", against_pixels(study), ""]
        else:
            lines += [f"## {name}", "", "To be filled by the GPU run (`bash experiments/run_gpu.sh`).", "", paper, ""]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(out)
    return out


if __name__ == "__main__":
    main()
