"""The demo's verdict line is computed from its numbers: above both baselines by more than the seed noise, or not."""

from armvision.demo import demo_verdict, format_table


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


def test_table_carries_the_verdict():
    run = {"label": "x", "labels": 10, "steps": 1, "images_seen": 10, "wall_seconds": 1.0, "loss_first": None}
    results = {"profile": "cpu", "device": "cpu", "setup": {"model": "m", "test_images": 100, "layer_decay": 0.75},
               "wall_seconds": 3.0, "note": "n", "seed_noise": 0.5,
               "runs": {"pretrain": run, "finetune": {**run, "eval": {"top1": 90.0}},
                        "scratch": {**run, "eval": {"top1": 80.0}}},
               "baseline": {"labels": 10, "seconds": 1.0, "top1": 85.0}}
    last = format_table(results).splitlines()[-1]
    assert last.startswith("verdict: pretraining helps") and "5.00 > 0.50" in last
    results["runs"]["finetune"]["eval"]["top1"] = 85.2
    assert format_table(results).splitlines()[-1].startswith("verdict: NOT shown")
