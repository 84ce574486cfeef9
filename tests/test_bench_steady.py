"""benchmarks/_steady.py: the warm-up that brings the card to its clocks under load before steps are timed."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import _steady  # noqa: E402


class FakeClock:
    """Each step advances the clock by ``dt``; ``sync`` is logged."""

    def __init__(self, dt):
        self.t, self.dt, self.log = 0.0, dt, []

    def step(self):
        self.t += self.dt
        self.log.append("step")

    def sync(self):
        self.log.append("sync")

    def __call__(self):
        return self.t


def test_warm_up_runs_the_warmup_steps_then_steps_for_the_seconds():
    c = FakeClock(dt=0.1)
    res = _steady.warm_up(c.step, 3, 1.0, c.sync, clock=c)
    assert c.log[:4] == ["step", "step", "step", "sync"]  # the warm-up steps (compilation), then their end awaited
    timed = c.log[4:]
    # steps in groups of SYNC_EVERY, each group awaited, until a second of them has run
    group = ["step"] * _steady.SYNC_EVERY + ["sync"]
    assert timed == group * (len(timed) // len(group)) and timed
    assert res["warm_steps"] == timed.count("step") and res["warm_steps"] * 0.1 >= 1.0 - 1e-9
    assert res["warm_steps"] * 0.1 < 1.0 + _steady.SYNC_EVERY * 0.1  # stops at the first group past the second
    assert res["warm_s"] == pytest.approx(res["warm_steps"] * 0.1)


def test_warm_up_of_zero_seconds_runs_only_the_warmup_steps():
    c = FakeClock(dt=0.1)
    assert _steady.warm_up(c.step, 2, 0.0, c.sync, clock=c) == {"warm_steps": 0, "warm_s": 0.0}
    assert c.log == ["step", "step", "sync"]


@pytest.mark.parametrize("bad", ["-1", "nan"])
def test_warm_seconds_option_rejects_bad_values(bad, capsys):
    ap = argparse.ArgumentParser()
    _steady.add_warm_option(ap)
    args = ap.parse_args(["--warm-seconds", bad])
    with pytest.raises(SystemExit):
        _steady.check_warm_option(ap, args.warm_seconds)
    assert "--warm-seconds must be 0 or more" in capsys.readouterr().err
    assert ap.parse_args([]).warm_seconds == _steady.WARM_SECONDS


@pytest.mark.parametrize("script", ["train_step.py", "reference.py"])
def test_scripts_reject_a_negative_warm_up(script, tmp_path):
    """Both timing scripts check --warm-seconds before they need a GPU or a reference checkout: a one-line error."""
    extra = [] if script == "train_step.py" else ["--arm-src", str(tmp_path), "--mamba-ssm-src", str(tmp_path),
                                                  "--causal-conv1d-src", str(tmp_path)]
    r = subprocess.run([sys.executable, str(BENCH / script), "--warm-seconds", "-2", *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--warm-seconds must be 0 or more, got -2.0" in r.stderr
    assert "Traceback" not in r.stderr
