"""The command line: every command explains itself with an example."""

import pytest
from click.testing import CliRunner

from hashindex.cli import cli

COMMANDS = ["train", "extract", "build", "remove", "query", "eval", "info", "demo", "serve", "verify", "derive",
            "prepare", "duplicates"]


def test_top_level_help_lists_commands():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_has_example(name):
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0 and "Example" in res.output and "hashindex " in res.output


def test_error_keeps_the_users_value_as_typed(tmp_path):
    """Python names in a message become flags (data= -> --data), but not inside the value the user typed."""
    res = CliRunner().invoke(cli, ["info", f"{tmp_path}/x.tar:limit=5"])
    assert res.exit_code == 2
    assert res.output.startswith(f"hashindex: error: PATH {tmp_path}/x.tar:limit=5: no such file or directory")


def test_library_names_become_the_running_commands_words(tmp_path):
    """shard_dir= is SHARD_DIR on build, but PATH on info and verify, whose one argument the user gave it as;
    options keep their flags everywhere."""
    from hashindex.cli.group import as_flags

    message = "shard_dir=/x: unreadable manifest; rerun extract with overwrite=True"
    assert as_flags(message, cli.commands["build"]) == \
        "SHARD_DIR /x: unreadable manifest; rerun extract with --overwrite"
    for name in ("info", "verify"):
        assert as_flags(message, cli.commands[name]).startswith("PATH /x: unreadable manifest; rerun extract with --ov")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text('{"format": "hashindex-sh')  # a manifest cut short
    for name in ("info", "verify"):
        res = CliRunner().invoke(cli, [name, str(tmp_path / "s")])
        assert res.exit_code == 2 and res.output.startswith(f"hashindex: error: PATH {tmp_path / 's'}"), res.output


def test_unknown_model_name_is_one_line():
    res = CliRunner().invoke(cli, ["info", "no-such-model"])
    assert res.exit_code == 2
    assert res.output.startswith("hashindex: error: PATH no-such-model: no such file or directory, nor a shipped "
                                 "model (shipped models: nin-cifar10-48, nin-cifar10-48-v2, nin-cifar10-48-v3, "
                                 "nin-cifar10-48-v4)")
    assert res.output.count("\n") == 1
    res = CliRunner().invoke(cli, ["info", "missing.pt"])
    assert res.exit_code == 2 and res.output.startswith("hashindex: error: PATH missing.pt: no such checkpoint file")


def test_a_directory_given_as_the_model_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["-q", "extract", "--model", str(tmp_path), "--data", str(tmp_path), "--out",
                                   str(tmp_path / "s")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"--model {tmp_path}: a directory; expected a checkpoint file (hashindex train writes one) or a " \
           "shipped model's name (shipped models: nin-cifar10-48" in res.output


def test_info_describes_a_collection_before_extracting_it(tmp_path):
    """info on a --data spec: the items, the skips known from names alone (decoding is extract's), the labels;
    the text form shortens a long label list, --json keeps it whole."""
    import json
    import tarfile

    from tests.conftest import make_mixed_folder

    make_mixed_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "imgs" / "root.jpg").write_bytes((tmp_path / "imgs" / "cat" / "good.jpg").read_bytes())  # no class
    for i in range(14):
        (tmp_path / "imgs" / f"k{i:02}").mkdir()
        (tmp_path / "imgs" / f"k{i:02}" / "a.jpg").write_bytes((tmp_path / "imgs" / "cat" / "good.jpg").read_bytes())
    res = CliRunner().invoke(cli, ["info", str(tmp_path / "imgs"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["kind"] == "images" and got["items"] == 13 + 2 + 14 and got["images"] == 13 - 1 + 1 + 14
    assert got["skipped_by_name"] == {"hidden": 1, "not-an-image": 1}  # notes.txt; text.jpg is found by decoding
    assert got["classes"] == 16 and got["labels"]["cat"] == 5 and got["labels"]["dog"] == 7 and got["labelled"] == 26
    assert got["labels"]["unlabelled"] == 1
    assert got["channels"] == 3  # colour images among them: training's default is RGB
    text = CliRunner().invoke(cli, ["info", str(tmp_path / "imgs")]).output
    assert "kind: images" in text and "cat=5, dog=7, " in text and ", ... (5 more; --json for all)\n" in text
    from hashindex.cli.search_cmds import _shown

    assert _shown(0.3375632811832428) == "0.3376" and _shown(12) == "12" and _shown(None) == "none"  # in text
    assert _shown({"kind": "flat", "tuning": {"nprobe": 4, "curve": [0.5, 0.96]}, "parts": []}) == \
        "kind=flat, tuning={nprobe=4, curve=[0.5, 0.96]}, parts=[]"
    assert _shown(["a", "b"]) == "a, b" and _shown({}) == "none" and _shown(list(range(14)), most=3) == \
        "0, 1, 2, ... (11 more; --json for all)"
    with tarfile.open(tmp_path / "photos.tar", "w") as tar:
        tar.add(tmp_path / "imgs" / "cat", arcname="cat")
    got = json.loads(CliRunner().invoke(cli, ["info", str(tmp_path / "photos.tar"), "--json"]).output)
    assert (got["images"], got["labels"]) == (5, {"cat": 5})


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


def test_the_demo_says_how_to_fine_tune_for_classes_of_your_own():
    from pathlib import Path

    from hashindex.demo import fine_tune_hint

    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert fine_tune_hint(["cat", "dog"], cifar, "nin-cifar10-48-v2", "pets/", 10, Path("/tmp/d")) is None
    hint = fine_tune_hint(["daisy", "rose"], cifar, "nin-cifar10-48-v2", "my photos/", 5, Path("/tmp/d"))
    assert "classes (daisy, rose) are not the model's" in hint
    assert "hashindex train --init nin-cifar10-48-v2 --data 'my photos/' --val-every 5 --epochs 6 --out " \
           "/tmp/d-model.pt" in hint
    assert "hashindex demo --model /tmp/d-model.pt --data 'my photos/' --every 5 --out /tmp/d-tuned" in hint


def test_the_demo_says_when_folders_say_nothing_of_the_photos():
    from hashindex.demo import meaningless_folders_hint

    assert meaningless_folders_hint({"by": "mAP@all ...", "scores": {"hamming": 0.9}}, ["a"], "mid", "m") is None
    choice = {"by": "...", "classes": "other", "confidence": 0.6, "ratio": 0.7, "chance": 0.2507,
              "label_scores": {"hamming": 0.2511, "mid": 0.2519}, "labels": "labels that tell nothing ..."}
    hint = meaningless_folders_hint(choice, ["2019", "2020", "2021", "2022"], "mid", "nin-cifar10-48-v3")
    assert hint.startswith("note: this collection's folders (2019, 2020, 2021, ...) say nothing of what its photos "
                           "show: every ranking scores what a random order does (mAP@all 0.252 against 0.251)")
    assert "re-ranks by 'mid', chosen without them\nnote: these photos look like classes nin-cifar10-48-v3" in hint


class _Refusing:
    """A source whose every read raises a user error (as a prepared store read at the wrong size would)."""

    paths = ["a.jpg", "b.jpg"]

    def __len__(self):
        return 2

    def read_array(self, i, size, channels):
        from hashindex import HashindexError

        raise HashindexError("data=/x: prepared at 64 px x 3 channel(s), not 32 px x 3")


def test_a_user_error_raised_in_a_decode_worker_stays_one_line():
    """torch re-raises a worker's error with the worker's traceback (which the CLI printed whole): the
    decoding loop gives its message back as it was raised, to the API and the CLI alike."""
    from hashindex import HashindexError
    from hashindex.data.loading import iter_batches, worker_message

    with pytest.raises(HashindexError) as caught:
        next(iter_batches(_Refusing(), 32, 3, batch_size=2, workers=1))
    assert str(caught.value) == "data=/x: prepared at 64 px x 3 channel(s), not 32 px x 3"
    assert worker_message("data=/x: no such file") == "data=/x: no such file"


def test_an_output_the_file_system_refuses_is_one_line(tmp_path, monkeypatch):
    """A file where an output folder is to be made, or a folder this user may not write: one line naming the
    path the user gave (not a lock or temp file of ours), exit status 2, nothing written (was a traceback)."""
    import errno
    import tempfile

    from hashindex.files import atomic_write_bytes

    (tmp_path / "afile").write_text("x")
    for args in (["info", "nin-cifar10-48-v3", "--plot", f"{tmp_path}/afile/curves.png"],
                 ["derive", "nin-cifar10-48-v3", "--out", f"{tmp_path}/afile/m.pt", "--test-flip"],
                 ["extract", "--data", f"{tmp_path}/none.tar", "--out", f"{tmp_path}/afile/shards"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2, (args, res.output)
        assert res.output == f"hashindex: error: {tmp_path}/afile: a file stands where a folder is needed\n"

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", f"{tmp_path}/.m.pt.x1y2.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # as a folder this user may not write (the tests run as root)
    with pytest.raises(PermissionError) as caught:
        atomic_write_bytes(tmp_path / "m.pt", b"")
    assert caught.value.filename == str(tmp_path / "m.pt")
    res = CliRunner().invoke(cli, ["derive", "nin-cifar10-48-v3", "--out", f"{tmp_path}/m.pt", "--test-flip"])
    assert res.exit_code == 2 and res.output == f"hashindex: error: {tmp_path}/m.pt: permission denied\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_progress_bars_only_on_a_terminal(tmp_path):
    """A command whose stderr is a file or a pipe (a background job's log) draws no progress bars, whose every
    redraw a log keeps; its summary line is there."""
    from tests.conftest import CIFAR_TEST, need

    need(CIFAR_TEST)
    res = CliRunner().invoke(cli, ["extract", "--data", str(CIFAR_TEST), "--limit", "300", "--workers", "0",
                                   "--out", str(tmp_path / "shards")])
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output and "img/s]" not in res.output and "extracted 300 images" in res.output
