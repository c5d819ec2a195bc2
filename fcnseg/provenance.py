"""Where a figure comes from: the fcnseg version and git commit, the torch and torchvision versions, the device with
its CPU model or GPU name, the command line and the date. ``fcnseg evaluate`` writes it into every metrics.json and
the benchmarks into every report, so a number can be traced to the code and the machine that produced it (a
time-budgeted score depends on both)."""
from __future__ import annotations

import datetime
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from . import __version__
from .runtime import cpu_model

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this fcnseg runs from; (None, None) for an installed copy or without git.
    The checkout must be fcnseg's own: a site-packages folder inside some other repository is not."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / "fcnseg" != PACKAGE_DIR:
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None or commit is None else bool(status))


def command_line(argv: list[str] | None = None) -> str:
    """``argv`` (default: this process's) as one shell-quoted line, the program named as a user types it."""
    if argv is None:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        if prog == "__main__.py":  # python -m PACKAGE
            prog = f"python -m {Path(sys.argv[0]).resolve().parent.name}"
        elif prog.endswith(".py"):
            prog = f"python {sys.argv[0]}"
        return " ".join([prog, *map(shlex.quote, sys.argv[1:])])
    return shlex.join(argv)


def provenance(device: torch.device | str | None = None, *, command: list[str] | None = None) -> dict:
    """The provenance record: ``fcnseg_version``, ``git_commit`` and ``git_dirty`` (null outside a git checkout),
    ``torch_version``, ``torchvision_version``, ``python_version``, ``device``, ``cpu_model``, ``gpu_name`` (null
    on a CPU), ``command`` (``command`` if given, else this process's arguments) and ``date`` (ISO 8601, UTC)."""
    try:
        import torchvision
        tv_version = torchvision.__version__
    except ImportError:
        tv_version = None
    device = torch.device("cpu" if device is None else device)
    gpu = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    commit, dirty = git_commit()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"fcnseg_version": __version__, "git_commit": commit, "git_dirty": dirty, "torch_version": torch.__version__,
            "torchvision_version": tv_version, "python_version": platform.python_version(), "device": str(device),
            "cpu_model": cpu_model(), "gpu_name": gpu, "command": command_line(command),
            "date": now.isoformat().replace("+00:00", "Z")}


def summary(record: dict) -> str:
    """One line of ``record`` for a printed or Markdown report."""
    commit = record["git_commit"][:12] + (" with uncommitted changes" if record["git_dirty"] else "") \
        if record["git_commit"] else "not a git checkout"
    hardware = record["gpu_name"] or record["cpu_model"] or "unknown CPU"
    return (f"fcnseg {record['fcnseg_version']} ({commit}), torch {record['torch_version']}, torchvision "
            f"{record['torchvision_version']}, {record['device']} ({hardware}), {record['date']}")
