"""The command line: config errors exit 2 with one line (no traceback), --print-config, dispatch."""

from __future__ import annotations

import pytest

from soar_fast import cli
from soar_fast.config_io import load_config
from tests.conftest import run_cli


@pytest.mark.parametrize("args, needle", [
    (["train", "--train.max_stpes=3"], "did you mean 'train.max_steps'"),
    (["train", "--train.max_steps=abc"], "train.max_steps: expected int"),
])
def test_config_errors_exit_2_without_traceback(args, needle):
    r = run_cli(*args, timeout=120)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_broken_toml_exit_2_names_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nmax_steps = 20\nseed = = 4\n")
    r = run_cli("train", str(path), timeout=120)
    assert r.returncode == 2 and f"{path}:3:" in r.stderr and "Traceback" not in r.stderr


def test_print_config_is_loadable(tmp_path, capsys):
    assert cli.main(["train", "--print-config", "--train.max_steps=7", "--eval.scorers=a,b"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "printed.toml"
    path.write_text(text)
    cfg = load_config(str(path))
    assert cfg.train.max_steps == 7 and cfg.eval.scorers == ["a", "b"]


def test_config_file_then_override(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nmax_steps = 5\nseed = 1\n")
    assert cli.main(["train", str(path), "--train.seed", "8", "--print-config"]) == 0
    cfg_text = capsys.readouterr().out
    assert "max_steps = 5" in cfg_text and "seed = 8" in cfg_text


def test_resume_followed_by_config_is_the_config(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nmax_steps = 5\n")
    seen = {}

    def fake_train(cfg, args):
        seen.update(max_steps=cfg.train.max_steps, resume=args.resume)
        return 0

    monkeypatch.setattr(cli, "_resolve", lambda target: fake_train)
    assert cli.main(["train", "--resume", str(path)]) == 0
    assert seen == {"max_steps": 5, "resume": ""}
    assert cli.main(["train", "--resume=/some/run/checkpoints/step-10"]) == 0
    assert seen["resume"] == "/some/run/checkpoints/step-10"


def test_missing_subcommand_module_is_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "sample", "soar_fast.not_a_module:main_sample")
    assert cli.main(["sample"]) == 1
    assert "'sample' is not available" in capsys.readouterr().err
