"""Property-based fuzzing (hypothesis) of config values and command-line flags: whatever a user types,
the command either accepts it or exits 2 with one line ``armvision COMMAND: error: ...`` -- never a traceback
(unless --debug, which shows it)."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armvision.cli import main
from armvision.train.config import describe_keys

KEYS = [k for k, _, _ in describe_keys() if k not in ("output_dir", "resume", "init")]
SMALL = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1e39, 1e-45, 1e308, 2**63]))
values = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=12),
                   st.lists(st.one_of(st.integers(-3, 300), st.floats(-2, 2), st.text(max_size=4)), max_size=4))


def as_text(v) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")


def run(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_accepted_or_one_line(code, err):
    assert "Traceback" not in err
    if code != 0:
        assert code == 2, err
        lines = [x for x in err.splitlines() if x.startswith("armvision")]
        assert len(lines) == 1 and ": error: " in lines[0], err


@SMALL
@given(key=st.sampled_from(KEYS), value=values)
def test_any_value_of_any_key_is_accepted_or_one_line(key, value, capsys):
    code, _, err = run(["pretrain", "--config", "fmnist_pretrain", f"--{key}", as_text(value), "--print-config"],
                       capsys)
    assert_accepted_or_one_line(code, err)
    if code == 2:
        assert err.startswith("armvision pretrain: error: ") and err.count("\n") == 1


@SMALL
@given(flags=st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text("abcdefghijklmnop._-", min_size=1,
                                                                           max_size=12)), values), max_size=3))
def test_random_flag_sets_are_accepted_or_one_line(flags, capsys):
    args = ["finetune", "--config", "fmnist_finetune", "--print-config"]
    for k, v in flags:
        args += [f"--{k}", as_text(v)]
    code, _, err = run(args, capsys)
    assert_accepted_or_one_line(code, err)


@SMALL
@given(arg=st.sampled_from(["d_state", "embed_dim", "depth", "patch_size", "cluster_size", "decoder_dim"]),
       value=st.one_of(st.integers(-3, 40), st.floats(-2, 40), st.text(max_size=3)))
def test_model_args_build_a_model_or_give_one_line(arg, value, capsys, tmp_path):
    """Values that pass the config build the tiny model (the model's own checks speak through ConfigError)."""
    from armvision.errors import ConfigError
    from armvision.train.config import load_config
    from armvision.train.trainer import build_model_from_config

    over = {"model.name": "arm_tiny_pz16", "model.img_size": 16, "model.args": {
        "patch_size": 4, "embed_dim": 16, "depth": 2, "d_state": 2, "cluster_size": 2, "decoder_dim": 16, arg: value}}
    try:
        cfg = load_config("fmnist_pretrain", over, task="pretrain")
        build_model_from_config(cfg)
    except ConfigError as e:
        assert "\n" not in str(e)


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception) as info:
        main(["pretrain", "--config", "fmnist_pretrain", "--optim.lr", "-1", "--print-config", "--debug"])
    assert "optim.lr" in str(info.value)
    import os

    assert "ARMVISION_DEBUG" not in os.environ  # --debug holds for its command only


def test_help_shows_the_values_of_the_preset_given(capsys):
    code, out, _ = run(["pretrain", "--config", "arm_base_in1k_pretrain", "--help"], capsys)
    assert code == 0
    assert "--optim.epochs (arm_base_in1k_pretrain: 1600; schema default 100)" in out
    assert "--model.img_size (arm_base_in1k_pretrain: 192; schema default 224)" in out
    code, out, _ = run(["pretrain", "--help"], capsys)
    assert code == 0 and "--optim.epochs (default 100)" in out and "with the schema's defaults" in out


def test_eval_checks_its_output_path_before_evaluating(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["eval", tmp_path / "no_such_run", "--output", blocker / "eval.json"], capsys)
    assert code == 2 and err == (f"armvision eval: error: --output {blocker / 'eval.json'}: {blocker} is a file, not a "
                                 "directory; nothing was evaluated\n")
