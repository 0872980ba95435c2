"""Where the net runs: the torch device a name means, and whether bf16 autocast pays there.

Used by every stage that runs the net (training, encoding, the service); the choice is measured, not assumed:
bf16 is the default only where it is the faster one.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from .errors import HashindexError


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU runs the net faster under bf16 autocast than in float32.

    oneDNN has bf16 convolution kernels from AVX-512 up; below that autocast falls back to slow
    generic code. Measured (docs/RESULTS.md, 2 threads): an AVX-512 Xeon trains 2.0x faster in bf16
    (tools/bench_train.py); an AVX2-only EPYC trains 9x slower (6.0 vs 55.3 img/s, the same tool) and
    encodes the default model 6x slower (17.8 vs 102.4 img/s, tools/bench_extract.py --precisions).
    """
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def uses_bf16(device: torch.device, bf16: bool | None) -> bool:
    """Whether the trunk runs under bf16 autocast on ``device``.

    bf16=False: never; True: wherever autocast supports it (CPU, CUDA with bf16); None (the
    default everywhere): where it is also the faster choice (CUDA with bf16, AVX-512 CPUs).
    """
    if bf16 is False:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (bf16 is True or cpu_bf16_is_fast())


def precision_of(device: torch.device, bf16: bool | None) -> str:
    """How the trunk runs on ``device``: "bfloat16" (autocast) or "float32" (see uses_bf16)."""
    return "bfloat16" if uses_bf16(device, bf16) else "float32"


def autocast_for(device: torch.device, bf16: bool | None):
    """bf16 autocast where asked for and supported; a no-op context otherwise."""
    if uses_bf16(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def free_memory(device: torch.device) -> int | None:
    """Bytes the net may still take on ``device``: CUDA's free memory, or on the CPU what Linux counts as
    available (MemAvailable, less if a cgroup's limit leaves less); None where this cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    room = cgroup_headroom()
    return max(free if room is None else min(free, room), 0)


UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1; v2 writes "max"
CGROUP_FILES = {  # (limit, usage, the stat line of reclaimable page cache) for cgroup v2 and v1
    "v2": ("memory.max", "memory.current", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def cgroup_headroom(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes the container's memory limits still leave: the least, over this process's cgroup and every cgroup
    above it (a limit set on a parent binds too), of limit - usage with the inactive page cache counted as free
    (the kernel drops it before the OOM killer runs; ``docker stats`` counts it so); cgroup v2 or v1, the
    process's cgroup read from ``own``. None without a limit. (A v1 usage counts the page cache: 15.1 GB at the
    root here, 8.6 GB of it inactive, 2026-12-06.)"""
    rooms = [_headroom(folder, kind) for kind, folder in _cgroup_folders(root, own)]
    rooms = [r for r in rooms if r is not None]
    return min(rooms) if rooms else None


def _cgroup_folders(root: Path, own: Path) -> list[tuple[str, Path]]:
    """("v2" or "v1", folder) for this process's memory cgroup and each one above it up to the mount's root
    (a container usually sees its own cgroup as the root; a systemd service or an older Docker a path below)."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        lines = []
    paths = {"v2": "/", "v1": "/"}
    for line in lines:  # "0::/path" (v2), "4:memory:/path" (v1; the controllers may be a list)
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["v1"] = path
    folders = []
    for kind, mount in (("v2", root), ("v1", root / "memory")):
        folder = mount / paths[kind].lstrip("/")
        while True:
            folders.append((kind, folder))
            if folder == mount or mount not in folder.parents:
                break
            folder = folder.parent
    return folders


def _headroom(folder: Path, kind: str) -> int | None:
    """limit - usage + inactive page cache of one cgroup folder; None where it sets no limit (or is absent)."""
    limit_file, usage_file, cache_key = CGROUP_FILES[kind]
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if not limit.isdigit() or int(limit) >= UNLIMITED:  # ("max": none)
        return None
    return int(limit) - usage + _stat(folder / "memory.stat", cache_key)


def _stat(path: Path, key: str) -> int:
    """One counter of a cgroup's memory.stat, 0 where it is absent."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto'; a one-line error if CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):  # torch knows mps, xpu, meta...: never run here
        raise HashindexError(f"device={device}: expected cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HashindexError(f"device={device}: CUDA is not available on this machine (use device=cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HashindexError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev
