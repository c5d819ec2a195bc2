"""The one atomic write: a file appears complete or not at all, the previous one survives a failed write, errors are
one line, and no other module renames files into place by itself."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from fcnseg import files
from fcnseg.errors import UserError
from fcnseg.viz import _pyplot, save_figure, save_image

PACKAGE = Path(__file__).resolve().parents[1] / "fcnseg"


def test_text_torch_image_and_figure_writes_land_whole(tmp_path):
    files.write_text("hello\n", tmp_path / "a" / "b.txt")
    files.save_torch({"w": torch.arange(3)}, tmp_path / "c.pt")
    save_image(Image.new("RGB", (4, 3), (1, 2, 3)), tmp_path / "d.png")
    fig = _pyplot().figure(figsize=(1, 1))
    save_figure(fig, tmp_path / "e.png")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello\n"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    assert Image.open(tmp_path / "d.png").getpixel((0, 0)) == (1, 2, 3)
    assert Image.open(tmp_path / "e.png").format == "PNG"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    files.write_text("old", target)

    def full_disk(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r"cannot write .*last\.pt: No space left on device \(free disk"):
        files.atomic_write(target, full_disk, hint=" (free disk space)")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["last.pt"]
    with pytest.raises(ZeroDivisionError):  # any other failure propagates, and cleans up too
        files.atomic_write(target, lambda f: 1 / 0)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["last.pt"]


def test_a_file_where_the_folder_should_be_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match=r"^cannot write .*a-file/sub/m\.json: (Not a directory|File exists)$"):
        files.write_text("{}", tmp_path / "a-file" / "sub" / "m.json")


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    for name in (".last.pt.tmp123", ".best.pt.tmp4", ".other.pt.tmp5", "last.pt"):
        (tmp_path / name).write_text("x")
    files.remove_stale_temporaries(tmp_path, "last.pt", "best.pt")
    assert sorted(os.listdir(tmp_path)) == [".other.pt.tmp5", "last.pt"]


def test_no_other_module_renames_files_into_place():
    """Every write goes through fcnseg.files (a resumable download's .part file is renamed once checksummed)."""
    renames = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if re.search(r"os\.(replace|rename)\(|\.tmp\b|mkstemp", p.read_text())]
    assert sorted(renames) == ["data/download.py", "files.py"], renames
