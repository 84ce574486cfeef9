"""benchmarks/compare.py without a GPU: its report (every ratio against the reference of the same run, the card
named), its subprocess runner and time budget, and its one-line refusal on a machine without CUDA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainhelpers import assert_process_gone, pipe_holder_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402

RES = {
    "device": "NVIDIA H100 80GB HBM3", "software": "torch 2.11, Triton 3.6", "date": "2026-12-06",
    "reference": [{"workload": "pretrain_b", "images_per_s": 2000.0, "peak_gib": 17.8},
                  {"workload": "finetune_b", "images_per_s": 500.0, "peak_gib": 20.1}],
    "cli": {"pretrain_b": {"images_per_s": 4100.0, "min_window_images_per_s": 3900.0, "peak_gib": 15.2},
            "finetune_b": {"images_per_s": 1100.0, "min_window_images_per_s": 1000.0, "peak_gib": 13.3}},
    "scan": {"results": [{"b": 256, "e": 768, "t": 128, "impl": "cuda_ref", "fwd_bwd_ms": 3.0, "ratio_to_cuda": 1.0},
                         {"b": 256, "e": 768, "t": 128, "impl": "triton_op", "fwd_bwd_ms": 1.5, "ratio_to_cuda": 0.5},
                         {"b": 256, "e": 768, "t": 128, "impl": "triton", "fwd_bwd_ms": 1.2, "ratio_to_cuda": 0.4},
                         {"b": 256, "e": 768, "t": 128, "impl": "op:states16", "fwd_bwd_ms": 1.4,
                          "ratio_to_cuda": 0.47}]},
    "train_step": {"pretrain_b:default": {"workload": "pretrain_b", "images_per_s": 4400.0, "ms": 58.2,
                                          "peak_gib": 15.0},
                   "pretrain_b:before": {"workload": "pretrain_b", "images_per_s": 4000.0, "ms": 64.0,
                                         "peak_gib": 15.0}},
    "skipped": ["armvision pretrain_l"],
}


def test_table_names_the_card_and_takes_every_ratio_from_this_run():
    text = compare.table(RES)
    assert "NVIDIA H100 80GB HBM3" in text.splitlines()[0]
    assert "| pretrain_b | 2000 (17.8) | 4100 (3900), 15.2 | 2.05 (1.95) | >= 2x |" in text
    assert "| finetune_b | 500 (20.1) | 1100 (1000), 13.3 | 2.20 (2.00) | >= 2x |" in text
    assert "| 256 x 768 x 128 | 3.000 | 1.500 | 0.50 | 1.200 | 0.40 | <= 0.5 |" in text
    assert "op variant states16, ratio to the CUDA kernel: 256 x 768 x 128: 0.47" in text
    assert "| pretrain_b | default | 4400 | 58.2 | 15.0 | 2.20 |" in text
    assert "| pretrain_b | before | 4000 | 64.0 | 15.0 | 2.00 |" in text
    assert "skipped (time budget): armvision pretrain_l" in text
    # a workload whose reference did not run has no ratio
    res = dict(RES, reference=[])
    assert "| pretrain_b | - (-) | 4100 (3900), 15.2 | - | >= 2x |" in compare.table(res)
    # with the op also timed compiled (scan.py --compiled-op), a column of its own between the eager op and the kernels
    scan = {"results": RES["scan"]["results"] + [{"b": 256, "e": 768, "t": 128, "impl": "op_compiled",
                                                  "fwd_bwd_ms": 1.35, "ratio_to_cuda": 0.45}]}
    text = compare.table(dict(RES, scan=scan))
    assert "| armvision op as models call it (states recomputed) ms | ratio | the op compiled" in text
    assert "| 256 x 768 x 128 | 3.000 | 1.500 | 0.50 | 1.350 | 0.45 | 1.200 | 0.40 | <= 0.5 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| scan fwd+bwd"))
    assert header.count("|") == text.splitlines()[text.splitlines().index(header) + 1].count("|")


def test_energy_table_divides_the_busy_power_by_the_images_per_second():
    """The energy per image of each side with sampled clocks (run V's figures, H100, 2026-12-08): the reference at
    604 W and 1880 images/s, the model alone at 690 W and 3419, the command at 687 W and 3409."""
    clock = {"samples": 100, "busy_samples": 30, "sm_mhz_median": 1900.0, "sm_mhz_min": 1800.0,
             "power_limited_share": 0.8, "power_w_max": 700.0, "temp_c_max": 57.0, "reasons": []}
    res = {"reference": [{"workload": "pretrain_b", "images_per_s": 1880.0, "peak_gib": 17.8}],
           "train_step": {"pretrain_b:default": {"workload": "pretrain_b", "images_per_s": 3419.0, "ms": 74.9}},
           "cli": {"pretrain_b": {"images_per_s": 3409.0, "min_window_images_per_s": 3391.0}},
           "clocks": {"ref_pretrain": dict(clock, power_w_median=604.0),
                      "train_step pretrain_b default": dict(clock, power_w_median=690.0),
                      "armvision pretrain_b": dict(clock, power_w_median=687.0),
                      "scan": dict(clock, power_w_median=443.0)}}
    text = compare.table(res)
    assert "| reference pretrain_b | 604 | 1880 | 0.321 |  |" in text
    assert "| model alone pretrain_b default | 690 | 3419 | 0.202 | 0.63 |" in text
    assert "| command pretrain_b | 687 | 3409 | 0.202 | 0.63 |" in text
    # too few busy samples (the 12 steps of run U's model alone: 8, its power still ramping up): no figure
    res["clocks"]["train_step pretrain_b default"]["busy_samples"] = 8
    assert "| model alone pretrain_b default | - | 3419 | - (8 busy samples) |  |" in compare.table(res)
    res["clocks"]["train_step pretrain_b default"]["busy_samples"] = 30
    # no busy samples (a step that only compiled), or no images/s: no row; no sampled clocks at all: no table
    res["clocks"]["armvision pretrain_b"]["busy_samples"] = 0
    assert "| command pretrain_b |" not in compare.table(res)
    assert "energy per image" not in compare.table(dict(res, clocks={}))
    # a reference step that timed two pretraining workloads has one power for both: neither gets a row
    two = dict(res, reference=res["reference"] + [{"workload": "pretrain_l", "images_per_s": 571.0}])
    text = compare.table(two)
    assert "| reference pretrain_b |" not in text
    assert "| model alone pretrain_b default | 690 | 3419 | 0.202 |  |" in text


def test_command_runs_under_other_switches_or_another_loader_are_named_in_the_table():
    assert compare.cli_key("pretrain_b", "default", 15, 15) == "pretrain_b"
    assert compare.cli_key("pretrain_b", "save", 15, 15) == "pretrain_b:save"
    assert compare.cli_key("pretrain_b", "default", 11, 15) == "pretrain_b:workers11"
    res = dict(RES, cli={"pretrain_b:save": {"images_per_s": 4200.0, "min_window_images_per_s": 4000.0},
                         "pretrain_b:workers11": {"images_per_s": 4300.0, "min_window_images_per_s": 4200.0,
                                                  "peak_gib": 15.2}})
    text = compare.table(res)
    assert "| pretrain_b under save | 2000 (17.8) | 4200 (4000), - | 2.10 (2.00) |" in text
    assert "| pretrain_b, 11 loader workers | 2000 (17.8) | 4300 (4200), 15.2 | 2.15 (2.10) |" in text


def test_the_commands_step_is_split_into_gpu_span_idle_and_loader_wait():
    """Commands whose log has the GPU span get a table of where their step goes, beside the model alone's step of
    the same call; older results (no gpu_ms) get none."""
    assert "GPU span" not in compare.table(RES)
    cli = {"pretrain_b": dict(RES["cli"]["pretrain_b"], wall_ms=62.4, gpu_ms=59.0, idle_ms=3.5, data_wait_ms=0.2),
           "pretrain_b:workers11": dict(RES["cli"]["pretrain_b"], wall_ms=63.0, gpu_ms=60.0, idle_ms=3.0)}
    text = compare.table(dict(RES, cli=cli))
    assert "| pretrain_b | 62.4 | 59.0 | 3.5 | 0.2 | 58.2 |" in text
    assert "| pretrain_b, 11 loader workers | 63.0 | 60.0 | 3.0 | - | 58.2 |" in text


def test_random_and_image_inputs_side_by_side():
    """--image-inputs: the model alone and the reference timed on images beside their random-number rows of the same
    call, each with its ratio; a call without them has no such table."""
    assert "inputs, same call" not in compare.table(RES)
    inputs = {"train_step": {"pretrain_b": {"workload": "pretrain_b", "images_per_s": 4300.0, "ms": 59.5}},
              "reference": [{"workload": "pretrain_b", "images_per_s": 1900.0, "inputs": "images"}]}
    text = compare.table(dict(RES, inputs=inputs))
    assert "| pretrain_b | random numbers | 58.2 (4400) | 2000 | 2.20 |" in text
    assert "| pretrain_b | images | 59.5 (4300) | 1900 | 2.26 |" in text
    # the reference's image run missing (budget): the model alone's row stands, without a ratio
    text = compare.table(dict(RES, inputs=dict(inputs, reference=[])))
    assert "| pretrain_b | images | 59.5 (4300) | - | - |" in text


def test_cli_variants_best_is_the_fastest_model_only_run():
    ts = RES["train_step"]
    assert compare.cli_variants(["default"], ts, ["pretrain_b"]) == ["default"]
    assert compare.cli_variants(["default", "best"], ts, ["pretrain_b"]) == ["default"]  # default is the fastest
    faster = dict(ts, **{"pretrain_b:seg2": {"workload": "pretrain_b", "images_per_s": 4600.0}})
    assert compare.cli_variants(["default", "best"], faster, ["pretrain_b"]) == ["default", "seg2"]
    assert compare.cli_variants(["best"], faster, ["pretrain_b"]) == ["seg2"]
    assert compare.cli_variants(["best"], ts, ["pretrain_b"]) == []  # only default measured best: nothing extra
    assert compare.cli_variants(["default", "best"], {}, ["pretrain_b"]) == ["default"]  # nothing measured
    assert compare.cli_variants(["best", "combo", "combo"], faster, ["finetune_b"]) == ["combo"]
    tie = dict(ts, **{"pretrain_b:combo": {"workload": "pretrain_b", "images_per_s": 4420.0}})  # +0.5 %: noise
    assert compare.cli_variants(["default", "best"], tie, ["pretrain_b"]) == ["default"]
    # a variant timed without default in the same call is not 'best' (2026-12-07: autotune_gemm alone was run)
    alone = {"pretrain_b:autotune_gemm": {"images_per_s": 3470.0}}
    assert compare.cli_variants(["default", "best"], alone, ["pretrain_b"]) == ["default"]
    assert compare.cli_variants(["best"], alone, ["pretrain_b"]) == []
    assert compare.cli_variants([], faster, ["pretrain_b"]) == []
    res = dict(RES, cli=dict(RES["cli"], **{"pretrain_b:seg2": {"images_per_s": 4300.0,
                                                                 "min_window_images_per_s": 4200.0, "peak_gib": 15.1}}))
    assert "| pretrain_b under seg2 | 2000 (17.8) | 4300 (4200), 15.1 | 2.15 (2.10) | >= 2x |" in compare.table(res)


def test_runner_logs_subprocesses_and_keeps_to_its_budget(tmp_path):
    run = compare.Run(tmp_path / "out", budget=100, work=tmp_path / "work")
    assert run.call("hello", [sys.executable, "-c", "print('hi from a step')"], timeout=60) == 0
    assert run.call("failing", [sys.executable, "-c", "raise SystemExit(3)"], timeout=60) == 3
    assert "hi from a step" in (tmp_path / "out" / "details.log").read_text()
    assert not run.fits("a long step", 1000) and run.fits("a short step", 1)
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [s["exit_code"] for s in saved["steps"]] == [0, 3] and saved["skipped"] == ["a long step"]


def test_refuses_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--out", str(tmp_path), "--arm-src", "x",
                           "--mamba-ssm-src", "y", "--causal-conv1d-src", "z"], capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_a_profiled_variant_adds_where_the_step_goes(capsys):
    """--profile-steps: the first variant's train_step.py --profile result becomes a kernels-by-kind table."""
    import train_step

    prof = {"step_ms": 76.0, "busy_ms_per_step": 70.0, "busy_share": 70 / 76, "kernels_per_step": 1400.0,
            "kinds": [{"kind": "matrix products (cuBLAS, cuDNN, CUTLASS)", "us_per_step": 31000.0,
                       "share": 31 / 76, "calls_per_step": 300.0},
                      {"kind": "selective scan (armvision Triton)", "us_per_step": 21000.0, "share": 21 / 76,
                       "calls_per_step": 36.0}],
            "top": [{"name": "_scan_bwd_kernel", "us_per_step": 12000.0, "share": 12 / 76, "calls_per_step": 12.0}]}
    res = dict(RES, train_step={"pretrain_b:default": dict(RES["train_step"]["pretrain_b:default"], profile=prof)})
    text = compare.table(res)
    assert ("where the step goes, pretrain_b:default (torch.profiler, 76.0 ms per profiled step, kernels busy 92%, "
            "1400 kernels per step)") in text
    assert "| selective scan (armvision Triton) | 21.00 | 27.6% | 36 |" in text
    assert "where the step goes" not in compare.table(RES)  # no profile, no section
    train_step.print_profile(prof)
    out = capsys.readouterr().out
    assert "1400 kernels per step" in out and "| `_scan_bwd_kernel` | 12.00 | 15.8% | 12 |" in out
    prof["most_launched"] = [{"name": "triton_poi_fused_fill_0", "us_per_step": 340.0, "calls_per_step": 170.0,
                              "us_per_call": 2.0}]
    train_step.print_profile(prof)
    assert "| `triton_poi_fused_fill_0` | 170 | 0.34 | 2.0 |" in capsys.readouterr().out


def test_profile_steps_records_the_active_steps():
    """train_step.profile_steps keeps the events of its active steps (a repeating profiler schedule cleared them at
    the last step: the device run of 2026-12-07 printed 0 kernels per step)."""
    import train_step

    x = torch.randn(32, 32)
    res = train_step.profile_steps(lambda: (x @ x).sum() + (x @ x).sum(), 3, cuda=False)
    mm = [r for r in res["top"] if r["name"] == "aten::mm"]
    assert mm and mm[0]["calls_per_step"] == 2
    # the most launched first, with their time per call
    counts = [r["calls_per_step"] for r in res["most_launched"]]
    assert counts == sorted(counts, reverse=True) and counts[0] >= 2
    mm = [r for r in res["most_launched"] if r["name"] == "aten::mm"][0]
    assert mm["calls_per_step"] == 2 and mm["us_per_call"] == pytest.approx(mm["us_per_step"] / 2)


def test_profile_steps_waits_for_the_gpu_at_the_cycle_edges(monkeypatch):
    """The warm-up step's kernels must end before the active cycle opens, and the last active step's before it
    closes: profile_steps synchronises before those two prof.step() calls (it synchronised after the first one, and
    an H100 profile of 2026-12-08 counted one warm-up backward among 5 active steps)."""
    import torch.profiler
    import train_step

    log = []

    class Profile(torch.profiler.profile):
        def step(self):
            log.append("prof.step")
            super().step()

    monkeypatch.setattr(torch.profiler, "profile", Profile)
    monkeypatch.setattr(train_step, "_sync", lambda cuda: log.append("sync"))
    x = torch.randn(8, 8)
    train_step.profile_steps(lambda: log.append("step") or (x @ x).sum(), 3, cuda=False)
    assert log == ["step", "sync", "prof.step", "step", "prof.step", "step", "prof.step", "step", "sync",
                   "prof.step"]


def test_save_inductor_code_copies_the_compiled_graphs(tmp_path):
    """train_step.py --inductor-code: the wrapper module of each graph inductor compiled and loaded in the process
    (here a CPU function's forward and backward) lands in the folder, with its kernels' code."""
    import train_step

    torch._dynamo.reset()
    x = torch.randn(64, requires_grad=True)
    torch.compile(lambda v: (v.sin() * 2).sum())(x).backward()
    names = train_step.save_inductor_code(tmp_path / "code")
    assert len(names) >= 2 and sorted(p.name for p in (tmp_path / "code").iterdir()) == sorted(names)
    texts = [(tmp_path / "code" / n).read_text() for n in names]
    assert all("def call(" in t for t in texts) and any("sin" in t for t in texts)
    torch._dynamo.reset()


def test_only_the_first_variant_is_profiled_and_keeps_its_code(tmp_path):
    """compare.py's --profile-steps and --inductor-code reach train_step.py for each workload's first variant only."""
    import argparse

    args = argparse.Namespace(profile_steps=5, inductor_code=True, out=tmp_path)
    assert compare.first_variant_args(args, "pretrain_b", "default", 0) == [
        "--profile", "5", "--inductor-code", str(tmp_path / "inductor_code" / "pretrain_b_default")]
    assert compare.first_variant_args(args, "pretrain_b", "step", 1) == []
    args = argparse.Namespace(profile_steps=0, inductor_code=False, out=tmp_path)
    assert compare.first_variant_args(args, "pretrain_b", "default", 0) == []


def test_train_step_keeps_the_variants_scan_states(monkeypatch):
    """train_step.run times the scan config in effect (compare.py's variants set it through ARMVISION_SCAN_CONFIG):
    it used to force states='recompute', so the 'save' variants of 2026-12-06/07 timed recompute."""
    import armvision.ops
    import train_step

    seen = []
    monkeypatch.setattr(train_step, "_run", lambda *a, **k: seen.append((armvision.ops.current_scan_config(), a[6])))
    with armvision.ops.scan_config(states="save", seg=2):
        train_step.run("pretrain_b", "triton", True, 1, 1, 1.0)
        train_step.run("pretrain_b", "triton", True, 1, 1, 1.0, states="recompute")
    with armvision.ops.scan_config(states="recompute"):
        train_step.run("pretrain_b", "triton", True, 1, 1, 1.0)
    assert [(c["states"], c["seg"], label) for c, label in seen] == [("save", 2, "save"), ("recompute", 2, "recompute"),
                                                                     ("recompute", 1, "recompute")]


def test_a_step_past_its_timeout_is_stopped_with_what_it_started(tmp_path):
    """A timed-out step's own subprocesses (torchrun's workers, pytest's children) stop with it, so they cannot keep
    the GPU busy for the next steps."""
    run = compare.Run(tmp_path / "out", budget=100, work=tmp_path / "work")
    pid_file = tmp_path / "child.pid"
    assert run.call("hangs", [sys.executable, "-c", pipe_holder_script(pid_file, 60)], timeout=3) == -9
    assert_process_gone(int(pid_file.read_text()))
    assert "stopped after 3 s" in (tmp_path / "out" / "details.log").read_text()


@pytest.mark.parametrize("name", sorted(compare.VARIANTS))
def test_every_variant_is_a_valid_switch_set(name, monkeypatch):
    """Each VARIANTS entry passes the checks its subprocess will run (a bad one would cost a device call): the
    scan/conv launch keys and layer switches through armvision's own environment check, the inductor options
    through the trainer's merge and torch's config (every key an inductor option)."""
    from armvision.ops import launch
    from armvision.train.compiled import inductor_options
    from torch._inductor import config as inductor_config

    env = compare.VARIANTS[name]
    switches = ("ARMVISION_SCAN_CONFIG", "ARMVISION_CONV_CONFIG", "ARMVISION_IN_PROJ", "ARMVISION_SWIGLU",
                "ARMVISION_SWIGLU_GATE", "ARMVISION_INDUCTOR")
    assert set(env) <= set(switches)
    for k in switches:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(launch, "_DEFAULTS", {})
    launch.check_environment()
    if "ARMVISION_SCAN_CONFIG" in env:
        assert launch.current_scan_config() == {**launch.SCAN_DEFAULTS, **{
            k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(env["ARMVISION_SCAN_CONFIG"]).items()}}
    if "ARMVISION_INDUCTOR" in env:
        opts = inductor_options("reduce-overhead", dict(env))
        for key in json.loads(env["ARMVISION_INDUCTOR"]):
            assert key in opts
            obj = inductor_config
            for part in key.split("."):
                assert hasattr(obj, part), f"{name}: {key} is not an inductor option"
                obj = getattr(obj, part)
