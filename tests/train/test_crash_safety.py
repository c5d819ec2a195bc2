"""Crash safety: `fcnseg train` killed with SIGKILL at random moments never leaves a checkpoint that fails to load,
`--resume auto` continues and finishes, and with --deterministic the final weights equal an uninterrupted run's.

Also: every ``torch.load`` in the package passes ``weights_only=True``."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fcnseg.train.checkpoint import read_checkpoint

PACKAGE = Path(__file__).resolve().parents[2] / "fcnseg"


def train_cmd(out: Path, max_iters: int) -> list[str]:
    return [sys.executable, "-m", "fcnseg", "train", "--data", "synthetic", "--backbone", "resnet18",
            "--batch-size", "2", "--workers", "0", "--crop-size", "40", "--amp", "none",
            "--set", "data_options={length: 16, size: [48, 64]}", "--set", "val_data_options={length: 3}",
            "--set", "log_every=1", "--set", "pretrained_backbone=null", "--val-every", "2",
            "--max-iters", str(max_iters), "--deterministic", "--seed", "1", "--device", "cpu",
            "--out", str(out), "--resume", "auto"]


ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def start(out: Path, max_iters: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(out, max_iters), stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=ENV)


def finish(out: Path, max_iters: int, log: Path) -> None:
    proc = start(out, max_iters, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def last_logged_iteration(out: Path) -> int:
    """Iterations completed when the process died: the last training record of log.jsonl (log_every=1)."""
    it = 0
    for line in (out / "log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if "loss" in rec:
            it = rec["iter"]
    return it


def temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp" in p.name)


def crash_trials(tmp_path: Path, trials: int, max_iters: int, seed: int) -> dict:
    """Train uninterrupted once; then train the same run, killing it ``trials`` times (each after it wrote a new
    checkpoint: 1-3 logged iterations later, at random, or — every third trial — the moment a checkpoint's temporary file appears, i.e.
    inside atomic_save), checking after each kill that the checkpoints load, and resuming. Returns the figures."""
    rng = random.Random(seed)
    ref, run = tmp_path / "reference", tmp_path / "killed"
    finish(ref, max_iters, tmp_path / "reference.log")
    reference = read_checkpoint(ref / "last.pt")
    run.mkdir()
    log = tmp_path / "killed.log"
    figures = {"trials": 0, "kills": [], "failures": []}
    for trial in range(trials):
        before = (run / "last.pt").stat().st_mtime_ns if (run / "last.pt").exists() else None
        proc = start(run, max_iters, log)
        deadline = time.monotonic() + 300
        # wait for a checkpoint written by this process, so that every trial makes progress
        while proc.poll() is None and time.monotonic() < deadline:
            p = run / "last.pt"
            if p.exists() and p.stat().st_mtime_ns != before:
                break
            time.sleep(0.02)
        during_write = trial % 3 == 2
        if during_write:  # SIGKILL inside atomic_save: the temporary file exists, the rename has not happened
            while proc.poll() is None and time.monotonic() < deadline and not list(run.glob(".last.pt.tmp*")):
                time.sleep(0.002)
        else:  # kill 1-3 iterations after the checkpoint (by the log, so a fast idle machine cannot outrun it)
            target = min(max_iters - 1, read_checkpoint(run / "last.pt")["iteration"] + rng.randint(1, 3)) \
                if (run / "last.pt").exists() else 1
            while proc.poll() is None and time.monotonic() < deadline and last_logged_iteration(run) < target:
                time.sleep(0.005)
        if proc.poll() is not None:
            figures["failures"].append(f"trial {trial}: the run ended (status {proc.returncode}) before the kill")
            continue
        partial = temp_files(run)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        figures["trials"] += 1
        killed_at = last_logged_iteration(run)
        try:
            ckpt = read_checkpoint(run / "last.pt")
            if (run / "best.pt").exists():
                read_checkpoint(run / "best.pt")
        except Exception as e:  # noqa: BLE001 - any failure to load is what this test looks for
            figures["failures"].append(f"trial {trial}: checkpoint does not load after the kill: {e}")
            continue
        figures["kills"].append({"trial": trial, "killed_at_iteration": killed_at,
                                 "checkpoint_iteration": ckpt["iteration"],
                                 "lost_iterations": killed_at - ckpt["iteration"],
                                 "during_checkpoint_write": bool(partial), "partial_files": partial})
        if ckpt["iteration"] > killed_at:
            figures["failures"].append(f"trial {trial}: checkpoint at {ckpt['iteration']} is ahead of the log")
    finish(run, max_iters, log)  # --resume auto to the end
    final = read_checkpoint(run / "last.pt")
    figures["final_iteration"] = final["iteration"]
    figures["finished"] = bool(final.get("finished"))
    figures["mismatched_tensors"] = [k for k, v in reference["model"].items() if not torch.equal(v, final["model"][k])]
    figures["leftover_temp_files"] = temp_files(run)
    figures["resume_messages"] = len(re.findall(r"resuming .* at iteration \d+", log.read_text()))
    print(f"\ncrash trials: {json.dumps(figures, indent=1)}")
    return figures


def check_figures(figures: dict, trials: int, max_iters: int) -> None:
    assert not figures["failures"], figures["failures"]
    assert figures["trials"] == trials
    assert figures["final_iteration"] == max_iters and figures["finished"]
    assert figures["resume_messages"] >= trials  # every restart really resumed from a checkpoint
    assert not figures["mismatched_tensors"], f"resumed weights differ from the uninterrupted run's: " \
                                              f"{figures['mismatched_tensors'][:5]}"
    assert not figures["leftover_temp_files"], figures["leftover_temp_files"]
    for k in figures["kills"]:
        assert 0 <= k["lost_iterations"] <= 2, k  # checkpoints every 2 iterations: at most 2 redone


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    figures = crash_trials(tmp_path, trials=3, max_iters=12, seed=0)
    check_figures(figures, 3, 12)


@pytest.mark.slow
def test_sigkill_ten_times_then_resume_matches_uninterrupted_run(tmp_path):
    figures = crash_trials(tmp_path, trials=10, max_iters=24, seed=1)
    check_figures(figures, 10, 24)


# --------------------------------------------------------------------------------------------------- safe loading
def test_every_torch_load_passes_weights_only_true():
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):  # the call's full argument list, across lines
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((f"{path.relative_to(PACKAGE.parent)}:{text.count(chr(10), 0, m.start()) + 1}",
                          text[m.end():i - 1]))
    assert calls, "no torch.load call found: the scan is broken"
    unsafe = [where for where, args in calls if not re.search(r"\bweights_only\s*=\s*True\b", args)]
    assert not unsafe, f"torch.load without weights_only=True at {unsafe}"
