"""The command line: every command explains itself with an example."""

import pytest
from click.testing import CliRunner

from hashindex.cli import cli

COMMANDS = ["train", "extract", "build", "query", "eval", "info", "demo"]


def test_top_level_help_lists_commands():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_has_example(name):
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0 and "Example" in res.output and "hashindex " in res.output


def test_unknown_model_name_is_one_line():
    res = CliRunner().invoke(cli, ["info", "no-such-model"])
    assert res.exit_code == 2
    assert res.output.startswith("hashindex: error: --model no-such-model: no such checkpoint file")
    assert res.output.count("\n") == 1


def test_batch_flags_go_together(tmp_path):
    res = CliRunner().invoke(cli, ["query", str(tmp_path), "--out", str(tmp_path / "r.h5")])
    assert res.exit_code == 2 and "--queries and --out go together" in res.output


def test_shard_actors_need_ray_backend(tmp_path):
    res = CliRunner().invoke(cli, ["query", str(tmp_path), "--by-id", "1", "--shard-actors"])
    assert res.exit_code == 2 and res.output == "hashindex: error: --shard-actors: needs --backend ray\n"
