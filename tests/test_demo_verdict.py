"""The demo's verdict line is computed from its numbers: above both baselines by more than the seed noise, or not."""

from armvision.demo import demo_verdict, format_table, probe_verdict


def test_verdict_needs_a_margin_over_the_stronger_baseline():
    assert demo_verdict(85.0, 80.0, 82.0, 1.0, "cpu").startswith("pretraining helps")
    v = demo_verdict(82.5, 80.0, 82.0, 1.0, "cpu")  # ahead of the pixels, but within the noise
    assert v.startswith("NOT shown") and "0.50 points" in v and "a linear classifier on the raw pixels" in v
    v = demo_verdict(81.0, 83.0, 79.0, 1.0, "cpu")  # from scratch is the stronger baseline here
    assert v.startswith("pretraining does NOT beat training from scratch") and "-2.00" in v
    assert demo_verdict(75.44, 71.42, 83.12, None, "cpu").startswith(
        "pretraining does NOT beat a linear classifier on the raw pixels")
    v = demo_verdict(75.44, 71.48, 83.12, 2.4, "cpu")  # the CPU demo: above from scratch, below the pixels
    assert v.startswith("pretraining beats training from scratch (+3.96 points") and "does NOT beat a linear" in v
    v = demo_verdict(75.44, 74.0, 83.12, 2.4, "cpu")  # above from scratch only within the noise
    assert v.startswith("pretraining does NOT beat a linear classifier on the raw pixels (-7.68 points; seed noise")


def test_verdict_without_measured_noise_or_numbers():
    v = demo_verdict(85.0, 80.0, 82.0, None, "cpu")
    assert "not measured" in v and "not shown to be real" in v
    assert demo_verdict(85.0, 80.0, 82.0, 1.0, "smoke").startswith("no verdict")
    assert demo_verdict(None, 80.0, 82.0, 1.0, "cpu").startswith("no verdict")


def _verdicts(table: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith("verdict")]


def test_table_carries_the_verdict():
    run = {"label": "x", "labels": 10, "steps": 1, "images_seen": 10, "wall_seconds": 1.0, "loss_first": None}
    results = {"profile": "cpu", "device": "cpu", "setup": {"model": "m", "test_images": 100, "layer_decay": 0.75},
               "wall_seconds": 3.0, "note": "n", "seed_noise": {"finetune": 0.5},
               "runs": {"pretrain": run, "finetune": {**run, "eval": {"top1": 90.0}},
                        "scratch": {**run, "eval": {"top1": 80.0}}},
               "baseline": {"labels": 10, "seconds": 1.0, "top1": 85.0}}
    table = format_table(results)
    assert _verdicts(table) == [line for line in table.splitlines() if "verdict" in line]  # one, for fine-tuning
    (last,) = _verdicts(table)
    assert last.startswith("verdict: pretraining helps") and "5.00 > 0.50" in last
    assert table.splitlines()[-1].startswith("total wall time 3 s; n")
    results["runs"]["finetune"]["eval"]["top1"] = 85.2
    assert _verdicts(format_table(results))[0].startswith("verdict: NOT shown")


def test_probe_verdict_needs_a_margin_over_the_stronger_baseline():
    v = probe_verdict("linear probe", 89.2, 86.6, 84.5, 1.0, "cpu")
    assert v.startswith("pretraining helps") and "2.60 > 1.00" in v and "the random-init encoder" in v
    v = probe_verdict("k-NN", 85.8, 84.1, 84.6, 1.5, "cpu")  # ahead of the pixels by 1.2, within the noise
    assert v.startswith("NOT shown") and "1.20 points" in v and "the raw pixels" in v and "(k-NN," in v
    v = probe_verdict("k-NN", 82.7, 73.2, 84.6, 1.0, "cpu")  # the pooled features: above random init only
    assert v.startswith("pretraining beats the random-init encoder (+9.50 points, more than the seed noise 1.00) "
                        "but does NOT beat the raw pixels (-1.90 points)")
    v = probe_verdict("k-NN", 82.7, 82.2, 84.6, 1.0, "cpu")
    assert v.startswith("pretraining does NOT beat the raw pixels (-1.90 points; seed noise 1.00)")
    assert "not shown to be real" in probe_verdict("k-NN", 85.8, 84.1, 84.6, None, "cpu")
    assert probe_verdict("k-NN", 85.8, 84.1, 84.6, 1.0, "smoke").startswith("no verdict")
    assert probe_verdict("k-NN", None, 84.1, 84.6, 1.0, "cpu").startswith("no verdict")


def test_table_of_a_probe_only_profile():
    pre = {"label": "p", "labels": 0, "steps": 936, "images_seen": 119808, "wall_seconds": 280.0, "loss_first": 0.93,
           "loss_last": 0.54, "loss_curve": [[1, 0.93], [2, 0.54]]}
    row = {"feature_dim": 2048, "linear_probe_top1": 89.2, "knn_top1": 85.8, "seconds": 140.0}
    results = {"profile": "cpu", "device": "cpu", "setup": {"model": "m"}, "wall_seconds": 590.0, "note": "n",
               "seed_noise": {"linear_probe": 1.0, "knn": 1.0}, "runs": {"pretrain": pre}, "baseline": None,
               "probe": {"features_label": "tokens", "train_images": 60000, "test_images": 10000,
                         "rows": {"arm": row, "random_init": {**row, "linear_probe_top1": 86.6, "knn_top1": 84.1},
                                  "pixels": {**row, "feature_dim": 784, "linear_probe_top1": 84.5,
                                             "knn_top1": 84.6}}}}
    table = format_table(results)
    assert "| ARM-pretrained encoder (frozen) | 2048 | 89.20 | 85.80 | 140 s |" in table
    assert "| raw pixels, no network | 784 | 84.50 | 84.60 | 140 s |" in table
    assert "fine-tune" not in table and "60000 labelled training images, scored on 10000 test images" in table
    lin, knn = _verdicts(table)
    assert lin.startswith("verdict (linear probe): pretraining helps") and "2.60 > 1.00" in lin
    assert knn.startswith("verdict (k-NN): pretraining helps") and "1.20 > 1.00" in knn
