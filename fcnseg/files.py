"""Files on disk: the one atomic write, and the one safe ``torch.load``.

Every file fcnseg writes (checkpoints, configs, metrics, images, figures, exports, weight files) goes through
:func:`atomic_path`: it is written to a temporary file in the same folder, flushed to disk, then renamed over the
target, so a crash or a full disk never leaves a partial file under the real name, and the previous file stays.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import torch

from .errors import UserError


def temporary_name(path: str | Path) -> Path:
    """Where :func:`atomic_path` writes ``path`` first: ``.NAME.tmpPID`` in the same folder (the rename is atomic
    within one file system; a process killed mid-write leaves this name, which ``train`` cleans up)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, hint: str = "") -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; once the block succeeds it is fsynced and renamed to
    ``path``. On any error the temporary file is removed; an ``OSError`` (disk full, a file where a folder should
    be) becomes a one-line :class:`UserError` naming ``path``, followed by ``hint``.

    Not ``mkstemp``: its 0600 mode would survive the rename, and a server running as another user could not read
    the file; a file opened here gets the usual 0666 & ~umask."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}{hint}") from None
    finally:
        _remove_quietly(tmp)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, hint: str = "") -> Path:
    """``write(f)`` into a binary file that appears as ``path`` only once complete (see :func:`atomic_path`)."""
    with atomic_path(path, hint=hint) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_text(text: str, path: str | Path, *, hint: str = "") -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()), hint=hint)


def save_torch(obj: object, path: str | Path, *, hint: str = "") -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f), hint=hint)


def _remove_quietly(path: Path) -> None:
    """Best-effort cleanup while reporting another error (the folder may not even exist: a file stands there)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale_temporaries(folder: str | Path, *names: str) -> None:
    """Remove the temporary files of processes killed while writing ``names`` in ``folder`` (never read, only
    wasted space)."""
    folder = Path(folder)
    for name in names:
        for stale in folder.glob(f".{name}.tmp*"):
            _remove_quietly(stale)


def safe_torch_load(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` with one-line errors for missing, truncated and unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [e.__class__.__name__]
        # torch's message opens with advice about weights_only=False; the line naming the refused object says more
        first = next((line for line in lines if "GLOBAL" in line), lines[0])
        raise UserError(f"refusing to load {path}: it contains objects other than tensors and plain containers, "
                        f"which could run code ({first[:160]}); only load files you trust with other tools") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0].split(". ")[0]
        raise UserError(f"cannot read {path}: {first[:200]} (truncated or corrupt? re-download "
                        f"or use an earlier checkpoint)") from None
