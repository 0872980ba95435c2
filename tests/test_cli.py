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


def test_threads_option_sets_torch_faiss_and_child_processes():
    """`hashindex --threads 1` (or HASHINDEX_THREADS=1) limits torch's and Faiss's thread pools in this
    process and in processes it starts (a subprocess: the test process keeps its own threads)."""
    import os
    import subprocess
    import sys

    probe = ("import faiss, torch, subprocess, sys\n"
             "from hashindex.cli import cli\n"
             "cli.main(sys.argv[1:], standalone_mode=False)\n"
             "child = subprocess.run([sys.executable, '-c', 'import faiss; print(faiss.omp_get_max_threads())'],"
             " capture_output=True, text=True).stdout.strip()\n"
             "print(torch.get_num_threads(), faiss.omp_get_max_threads(), child)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "HASHINDEX_THREADS")}
    for args, extra in ((["--threads", "1", "info", "nin-cifar10-48-v2"], {}),
                        (["info", "nin-cifar10-48-v2"], {"HASHINDEX_THREADS": "1"})):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                             env={**env, **extra}, check=True).stdout
        assert out.splitlines()[-1] == "1 1 1", out
    res = CliRunner().invoke(cli, ["--threads", "0", "info", "nin-cifar10-48-v2"])
    assert res.exit_code == 2 and "--threads" in res.output
