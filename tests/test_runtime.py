"""Process settings: malloc keeps freed memory for the commands that run the net (glibc only)."""

import json
import os
import subprocess
import sys

import pytest

from hashindex.runtime import KEEP_ENV


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="malloc settings are glibc's")

# allocate 64 MB, report where glibc put it (mallinfo2: hblkhd = bytes in blocks with their own mapping), free it
PROBE = r"""
import ctypes, json, sys
from hashindex.runtime import keep_freed_memory
applied = keep_freed_memory() and keep_freed_memory() if sys.argv[1] == "keep" else None  # again: still applied
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
buf = libc.malloc(64 << 20)
ctypes.memset(buf, 1, 64 << 20)
held = libc.mallinfo2()
libc.free(buf)
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "mapped": held.hblkhd, "heap": held.arena, "free_after": freed.fordblks}))
"""


def clean_env() -> dict[str, str]:
    """This environment without malloc settings (a CLI test in this worker may have set glibc's variables)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != KEEP_ENV}


def probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean_env(), **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_freed_memory_is_kept_in_the_heap():
    """By default a 64 MB block gets its own mapping (given back at free); kept, it lies in the heap and its
    free space stays there for the next batch."""
    plain = probe("plain")
    assert plain["mapped"] >= 64 << 20
    kept = probe("keep")
    assert kept["applied"] is True
    assert kept["mapped"] < 64 << 20 and kept["heap"] >= 64 << 20
    assert kept["free_after"] >= 64 << 20


def test_keeping_freed_memory_yields_to_the_users_settings():
    assert probe("keep", **{KEEP_ENV: "0"})["applied"] is False
    by_hand = probe("keep", MALLOC_MMAP_MAX_="65536")
    assert by_hand["applied"] is False and by_hand["mapped"] >= 64 << 20


def test_the_cli_keeps_freed_memory_for_its_workers_but_not_for_serve(tmp_path):
    """Set for a batch command and the processes it starts (glibc reads MALLOC_* at their start); not by serve."""
    show = ("import os, sys; from hashindex.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('MMAP_MAX=%s\\n' % os.environ.get('MALLOC_MMAP_MAX_'))")
    def env_after(*args: str) -> str:
        res = subprocess.run([sys.executable, "-c", show, *args], env=clean_env(), capture_output=True, text=True)
        return res.stderr.strip().splitlines()[-1]

    assert env_after("info", str(tmp_path / "missing")) == "MMAP_MAX=0"
    assert env_after("serve", "--help") == "MMAP_MAX=None"


def test_counts_of_threads_and_decode_processes_past_the_machine_are_refused(monkeypatch, tmp_path):
    """A typo's count is one line and exit 2, before anything is started or written: `--workers 2147483648`
    forked until the OOM killer ended the largest process on the machine, `--threads 100000` crashed in OpenMP."""
    from click.testing import CliRunner

    from hashindex import HashindexError
    from hashindex.cli import cli
    from hashindex.runtime import check_workers, most_parallel, set_threads
    from tests.conftest import CIFAR_TEST

    monkeypatch.setattr("hashindex.runtime.os.cpu_count", lambda: 3)
    assert most_parallel() == 12
    check_workers(0)
    check_workers(12)
    for bad in (13, -1, 2**31):
        with pytest.raises(HashindexError, match=rf"^workers={bad}: expected 0 to 12 decode processes \(4 per core "):
            check_workers(bad)
    with pytest.raises(HashindexError, match=r"^threads=13: expected 1 to 12 "):
        set_threads(13)
    out = tmp_path / "shards"
    got = CliRunner().invoke(cli, ["extract", "--data", str(CIFAR_TEST), "--out", str(out), "--workers", "2147483648"])
    assert got.exit_code == 2 and got.output.startswith("hashindex: error: --workers 2147483648: expected 0 to 12 ")
    assert not out.exists()
    got = CliRunner().invoke(cli, ["--threads", "100000", "info", str(tmp_path)])
    assert got.exit_code == 2 and got.output.startswith("hashindex: error: --threads 100000: expected 1 to 12 ")
