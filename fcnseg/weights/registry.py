"""Named weights: the authors' released FCN nets and pytorch-fcn's conversions of them, fetched by name into the
TORCH_HOME cache (``torch.hub.get_dir()/checkpoints``) and checked against the checksum their publisher gives.

Every URL, checksum and score below is copied from the source named in its entry; none is measured here. Where no
one publishes a checksum for a file, the entry records ``None`` and the first download logs the file's sha256.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.download import RemoteFile, fetch, file_digest, verify
from ..data.siftflow import CLASSES as SIFTFLOW_CLASSES
from ..data.voc import CLASSES as VOC_CLASSES
from ..data.voc import PALETTE as VOC_PALETTE
from ..errors import UserError
from ..normalization import CAFFE_BGR, Normalization

log = logging.getLogger("fcnseg")

AUTHORS = "https://github.com/shelhamer/fcn.berkeleyvision.org"
CAFFE_DL = "http://dl.caffe.berkeleyvision.org"
PYTORCH_FCN = "https://github.com/wkentaro/pytorch-fcn"
# The authors' 60 PASCAL-Context outputs: 0 is background, then their data/pascal-context/classes-59.txt order
# (not the alphabetical order of fcnseg.data.pascal_context, which has no background class)
PASCAL_CONTEXT_60 = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "bag", "bed", "bench",
    "book", "building", "cabinet", "ceiling", "clothes", "computer", "cup", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign", "plate", "road", "rock",
    "shelves", "sidewalk", "sky", "snow", "bedcloth", "track", "tree", "truck", "wall", "water", "window", "wood")
# NYUDv2's 40-class task (Gupta et al. 2014) as the authors' data/nyud/classes.txt spells it; void is not an output
NYUD_40 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling", "books",
    "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person", "night stand",
    "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop")
# The mean pixels (BGR, 0-255) of the authors' data layers: siftflow_layers.py and nyud_layers.py. VOC and
# PASCAL-Context use the ILSVRC mean of CAFFE_BGR (pascalcontext_layers.py rounds it to three decimals).
SIFTFLOW_BGR = Normalization((114.578, 115.294, 108.353), bgr=True, value_range=255.0, name="siftflow-caffe")
NYUD_BGR = Normalization((116.190, 97.203, 92.318), bgr=True, value_range=255.0, name="nyud-caffe")


@dataclass(frozen=True)
class WeightsEntry:
    """One named set of weights: where to get it, how to check it, and the model it fits."""

    name: str
    url: str
    filename: str  # its name in the cache
    arch: str
    classes: tuple[str, ...]
    normalization: Normalization
    source: str  # where the URL (and the checksum, if any) is published
    backbone: str = "vgg16"
    geometry: str = "caffe"
    format: str = "caffemodel"  # for fcnseg.load_weights
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None
    checksum_source: str | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    metric: str | None = None  # the score its publisher reports, e.g. "63.6 mean IU, PASCAL VOC 2011 seg11valid"
    metric_source: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def remote(self) -> RemoteFile:
        return RemoteFile(self.url, self.filename, md5=self.md5, sha256=self.sha256, sha1=self.sha1, extract=False)


def _authors(name: str, arch: str, filename: str, classes: tuple[str, ...], normalization: Normalization,
             **kw) -> WeightsEntry:
    return WeightsEntry(name, f"{CAFFE_DL}/{filename}", filename, arch, classes, normalization,
                        source=f"{AUTHORS}/tree/master/{name} (caffemodel-url)", **kw)


_VOC = dict(classes=tuple(VOC_CLASSES), normalization=CAFFE_BGR, palette=tuple(map(tuple, VOC_PALETTE)),
            metric_source=f"{AUTHORS} README")
_OPENCV = "https://github.com/opencv/opencv_extra testdata/dnn/download_models.py"
_VOC_PYTORCH_FCN = dict(_VOC, format="pytorch-fcn",
                        metric_source=f"{PYTORCH_FCN} README, accuracy table at pytorch-fcn 1.7.0, row 'Original'")


def _pytorch_fcn(name: str, arch: str, url: str, filename: str, md5: str, module: str, cls: str, metric: str
                 ) -> WeightsEntry:
    where = f"torchfcn/models/{module} (pytorch-fcn 1.9.7), {cls}.download"
    return WeightsEntry(name, url, filename, arch, source=where, md5=md5, checksum_source=where, metric=metric,
                        **_VOC_PYTORCH_FCN)


WEIGHTS: dict[str, WeightsEntry] = {e.name: e for e in (
    # ---- the authors' Caffe nets (fcn.berkeleyvision.org), decoded by fcnseg.weights.caffemodel
    _authors("voc-fcn32s", "fcn32s", "fcn32s-heavy-pascal.caffemodel", sha1="05eb922d7829c39448f57e5ab9d8cd75d6c0be6d",
             checksum_source=f"{_OPENCV} (early versions, entry 'voc-fcn32s')",
             metric="63.6 mean IU, PASCAL VOC 2011 seg11valid", **_VOC),
    _authors("voc-fcn16s", "fcn16s", "fcn16s-heavy-pascal.caffemodel",
             metric="65.0 mean IU, PASCAL VOC 2011 seg11valid", **_VOC),
    _authors("voc-fcn8s", "fcn8s", "fcn8s-heavy-pascal.caffemodel", sha1="c449ea74dd7d83751d1357d6a8c323fcf4038962",
             md5="c03b2953ebd846c270da1a8e8f200c09",
             checksum_source=f"{_OPENCV} (sha1, entry 'Fcn'); https://github.com/wkentaro/fcn fcn/data.py, "
                             f"download_fcn8s_caffemodel (md5)",
             metric="65.5 mean IU, PASCAL VOC 2011 seg11valid (67.2 on VOC 2012 test)", **_VOC),
    _authors("voc-fcn8s-atonce", "fcn8s-atonce", "fcn8s-atonce-pascal.caffemodel",
             metric="65.4 mean IU, PASCAL VOC 2011 seg11valid", **_VOC),
    # SIFT Flow nets have a semantic (33 classes) and a geometric (3 classes) head; by name, the semantic one loads
    # (load_weights into a model with heads=SIFT Flow's HEADS loads both)
    *(_authors(f"siftflow-{arch}", arch, f"siftflow-{arch}-heavy.caffemodel", tuple(SIFTFLOW_CLASSES), SIFTFLOW_BGR)
      for arch in ("fcn32s", "fcn16s", "fcn8s")),
    *(_authors(f"pascalcontext-{arch}", arch, f"pascalcontext-{arch}-heavy.caffemodel", PASCAL_CONTEXT_60, CAFFE_BGR)
      for arch in ("fcn32s", "fcn16s", "fcn8s")),
    # the colour net only: the HHA, early color-depth and late color-HHA nets need depth inputs fcnseg does not make
    _authors("nyud-fcn32s-color", "fcn32s", "nyud-fcn32s-color-heavy.caffemodel", NYUD_40, NYUD_BGR),
    # ---- pytorch-fcn's conversions of the authors' VOC nets (torchfcn's *_from_caffe.pth, on Google Drive)
    _pytorch_fcn("pytorch-fcn-voc-fcn32s", "fcn32s", "https://drive.google.com/uc?id=11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f",
                 "fcn32s_from_caffe.pth", "d3eb467a80e7da0468a20dfcbc13e6c8", "fcn32s.py", "FCN32s",
                 "63.63 mean IU, PASCAL VOC 2011 seg11valid"),
    _pytorch_fcn("pytorch-fcn-voc-fcn16s", "fcn16s", "http://drive.google.com/uc?id=1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP",
                 "fcn16s_from_caffe.pth", "a2d4035f669f09483b39c9a14a0d6670", "fcn16s.py", "FCN16s",
                 "65.01 mean IU, PASCAL VOC 2011 seg11valid"),
    _pytorch_fcn("pytorch-fcn-voc-fcn8s", "fcn8s", "http://drive.google.com/uc?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI",
                 "fcn8s_from_caffe.pth", "de93e540ec79512f8770033849c8ae89", "fcn8s.py", "FCN8s",
                 "65.51 mean IU, PASCAL VOC 2011 seg11valid"),
    _pytorch_fcn("pytorch-fcn-voc-fcn8s-atonce", "fcn8s-atonce",
                 "http://drive.google.com/uc?id=0B9P1L--7Wd2vblE1VUIxV1o2d2M", "fcn8s-atonce_from_caffe.pth",
                 "bfed4437e941fef58932891217fe6464", "fcn8s.py", "FCN8sAtOnce",
                 "65.40 mean IU, PASCAL VOC 2011 seg11valid"),
)}


def list_weights() -> list[str]:
    """The names ``build_model(weights=...)`` accepts, e.g. ``voc-fcn8s``."""
    return list(WEIGHTS)


def get_weights(name: str) -> WeightsEntry:
    """The registry entry called ``name``; an error listing the valid names for any other."""
    if name not in WEIGHTS:
        raise ValueError(f"unknown weights {name!r}; valid: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def cache_dir() -> Path:
    """Where named weights are kept: ``$TORCH_HOME/hub/checkpoints`` (torchvision's own weights cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(entry: WeightsEntry, *, progress: bool = True) -> Path:
    """The cached file of ``entry``, downloaded first if absent (resumable: see :func:`fcnseg.data.download.fetch`).

    A file that does not match the published checksum is never used: a fresh download is deleted, a file already in
    the cache is reported (it may have been put there by hand). Both cases are one-line errors.
    """
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the weights cache {folder} ({e.strerror}); set TORCH_HOME to a writable "
                        f"folder") from None
    dest = folder / entry.filename
    spec = entry.remote
    if dest.is_file():
        bad = verify(dest, spec)
        if bad:
            raise UserError(f"{dest} is not the file of weights {entry.name!r} ({bad}); delete it and rerun to "
                            f"download {entry.url}")
        return dest
    fetch(entry.url, dest, progress=progress)
    bad = verify(dest, spec)
    if bad:
        with open(dest, "rb") as f:
            page = f.read(512).lstrip().startswith(b"<")
        dest.unlink()
        if page:  # Google Drive answers large files with a confirmation page instead of the file
            raise UserError(f"{entry.url} sent a web page, not the weights ({bad}); open it in a browser, save the "
                            f"file as {dest}, then rerun")
        raise UserError(f"checksum mismatch for {entry.url} ({bad}); the download was deleted, rerun to fetch it "
                        f"again")
    if not (entry.sha256 or entry.sha1 or entry.md5):
        log.warning("%s: no published checksum for %s; sha256 of the downloaded file: %s (compare it with another "
                    "copy before trusting it)", entry.name, entry.url, file_digest(dest, "sha256"))
    return dest
