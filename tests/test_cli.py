"""The ``armvision`` command line as one package: every command's help, ``--debug`` on every command, one-line
user errors (exit 2) under the command's name, and dashed flags that also take their underscore spelling."""

import argparse

import pytest

from armvision.argtypes import fraction, nonneg_float, nonneg_int, positive_float, positive_int
from armvision.cli import build_parser, main
from armvision.errors import UserError

COMMANDS = ["pretrain", "finetune", "eval", "demo", "convert", "export", "extract", "linprobe", "knn", "visualize",
            "predict"]


def test_the_command_list_is_the_parsers():
    assert sorted(build_parser().command_parsers) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_that_lists_debug_and_only_dashed_flags(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: armvision {command} ") and "--debug" in out
    # the flags help and errors name are the dashed ones (the config keys of the epilog keep their spelling)
    sub = build_parser().command_parsers[command]
    assert not [s for a in sub._actions for s in a.option_strings if "_" in s]


def _user_error_argv(command, tmp_path):
    """A command line of ``command`` that is a user error (a missing input), found before any real work."""
    missing = str(tmp_path / "missing")
    return {
        "pretrain": ["pretrain", "--config", "no_such_preset"],
        "finetune": ["finetune", "--config", "no_such_preset"],
        "eval": ["eval", missing],
        "demo": ["demo", "--data-root", missing, "--output-dir", str(tmp_path / "demo")],
        "convert": ["convert", missing, str(tmp_path / "out")],
        "export": ["export", missing, str(tmp_path / "out")],
        "extract": ["extract", missing, str(tmp_path), str(tmp_path / "f.npy")],
        "linprobe": ["linprobe", missing],
        "knn": ["knn", missing],
        "visualize": ["visualize", missing, str(tmp_path), "--output", str(tmp_path / "vis")],
        "predict": ["predict", missing, missing],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_user_error_is_one_line_under_the_command_name_and_exit_2(command, tmp_path, capsys):
    code = main(_user_error_argv(command, tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert errors == [err.splitlines()[-1]] and errors[0].startswith(f"armvision {command}: error: "), err


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("command", COMMANDS)
def test_debug_on_every_command_shows_the_error_itself(command, where, tmp_path, capsys):
    argv = _user_error_argv(command, tmp_path)
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(UserError):
        main(argv)


def test_flags_of_a_command_without_config_keys_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "a.pth", "out", "--optim.lr", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "armvision convert: error: unrecognized arguments: --optim.lr 1"


@pytest.mark.parametrize("argv", [
    ["eval", "--checkpoint", "runs/x"],  # eval takes config overrides: --checkpoint would be an empty override
    ["eval", "runs/x", "--checkpoint"],
    ["knn", "--checkpoint=runs/x"],  # nothing left for the positional: argparse's complaint would be the symptom
    ["predict", "--checkpoint", "model_dir", "a.jpg"],  # no overrides: an unknown flag
    ["extract", "--model", "m", "imgs", "out.npy"],
])
def test_a_positional_argument_given_as_a_flag_is_named(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    flag = next(a for a in argv[1:] if a.startswith("--")).partition("=")[0]
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"armvision {argv[0]}: error: {flag}: the {flag[2:]} is a positional argument here, given without a flag "
        "(see the usage above)")


def test_a_config_section_given_as_one_flag_says_to_set_its_keys(capsys):
    """``--checkpoint`` alone in a training command is the checkpoint section of the config, not a value."""
    for argv in (["pretrain", "--checkpoint"], ["pretrain", "--optim", "3"], ["finetune", "checkpoint=x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        section = "optim" if "--optim" in argv else "checkpoint"
        assert err.startswith(f"armvision {argv[0]}: error: '{section}' is a section; set its keys (") and \
            "<class" not in err, err


def _sample(action: argparse.Action) -> list[str]:
    """A value for ``action`` that is not its default."""
    if action.nargs == 0:
        return []
    if action.choices:
        value = [c for c in action.choices if c != action.default][0]
    else:
        value = {positive_int: "3", nonneg_int: "3", positive_float: "0.5", nonneg_float: "0.5",
                 fraction: "0.5"}.get(action.type, "x=1" if action.metavar == "KEY=VALUE" else "some_value")
    return [value]


def _dashed_flags(parser):
    return [a for a in parser._actions if any("-" in s[2:] for s in a.option_strings if s.startswith("--"))]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_dashed_flag_takes_its_underscore_spelling_with_the_same_value(command):
    parser = build_parser()
    sub = parser.command_parsers[command]
    positionals = [a for a in sub._actions if not a.option_strings]
    base = [command] + [f"p{i}" for i, _ in enumerate(positionals)]
    base += [x for a in sub._actions if a.required and a.option_strings for x in (a.option_strings[0], "req")]
    flags = _dashed_flags(sub)
    assert flags or command == "export"
    for action in flags:
        dashed = next(s for s in action.option_strings if s.startswith("--") and "-" in s[2:])
        under = "--" + dashed[2:].replace("-", "_")
        value = _sample(action)
        a, extra_a = parser.parse_known_args(base + [dashed, *value])
        b, extra_b = parser.parse_known_args(base + [under, *value])
        assert not extra_a and not extra_b, (dashed, extra_a, extra_b)
        got_a, got_b = getattr(a, action.dest), getattr(b, action.dest)
        assert got_a == got_b and got_a != action.default, (dashed, got_a, got_b)


@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_config_keys_and_flags_of_the_training_commands_take_both_spellings(task, tmp_path, capsys):
    def printed(*flags):
        assert main([task, "--config", f"fmnist_{task}", *flags]) == 0
        return capsys.readouterr().out

    out = str(tmp_path / "run")
    dashed = printed("--output-dir", out, "--optim.micro-batch", "4", "--data.pin-memory", "false",
                     "--print-config")
    under = printed("--output_dir", out, "--optim.micro_batch", "4", "--data.pin_memory", "false",
                    "--print_config")
    assert dashed == under
    assert f"output_dir: {out}" in dashed and "micro_batch: 4" in dashed and "pin_memory: false" in dashed


def test_pretrain_help_with_a_preset_shows_that_presets_values(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", "fmnist_pretrain", "--help"])
    assert "with the values of --config fmnist_pretrain" in capsys.readouterr().out
