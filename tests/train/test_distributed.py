"""torchrun with 2 CPU processes on gloo: DDP training keeps ranks identical, resume works, and distributed
evaluation equals single-process evaluation exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from fcnseg.cli import main

TINY = ["--data", "synthetic", "--backbone", "resnet18", "--batch-size", "2", "--workers", "0", "--crop-size", "40",
        "--amp", "none", "--lr", "0.01", "--optimizer", "sgd", "--seed", "3",
        "--set", "data_options={length: 16, size: [48, 64]}", "--set", "val_data_options={length: 5}"]


def torchrun(*args, cwd, nproc=2, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def test_ddp_training_keeps_ranks_identical_and_resumes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch
        from fcnseg.train.config import resolve_config
        from fcnseg.train.loop import train
        from fcnseg.cli import main
        out, iters = sys.argv[1], int(sys.argv[2])
        budget = sys.argv[3] if len(sys.argv) > 3 else None
        cfg = resolve_config(None, None, dict(data="synthetic", backbone="resnet18", arch="fcn8s", batch_size=2,
            workers=0, crop_size=40, amp="none", lr=0.01, optimizer="sgd", seed=3, max_iters=iters, val_every=2,
            data_options={{"length": 16, "size": [48, 64]}}, val_data_options={{"length": 5}}, out=out,
            resume="auto", time_budget=budget))
        summary = train(cfg, progress=False)
        params = {{k: v.detach().clone() for k, v in summary["model"].named_parameters()}}
        torch.save(params, os.path.join(out, f"params-rank{{os.environ['RANK']}}.pt"))
    """))
    run = tmp_path / "run"
    torchrun(str(script), str(run), "3", cwd=tmp_path)
    p0 = torch.load(run / "params-rank0.pt", weights_only=True)
    p1 = torch.load(run / "params-rank1.pt", weights_only=True)
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    assert p0["score_fr.weight"].abs().sum() > 0
    records = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert records[0]["world_size"] == 2 and records[0]["global_batch"] == 4 and records[0]["batch_per_process"] == 2
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 3
    # resume: every rank loads the same last.pt and continues to iteration 5
    torchrun(str(script), str(run), "5", cwd=tmp_path)
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 5
    q0 = torch.load(run / "params-rank0.pt", weights_only=True)
    q1 = torch.load(run / "params-rank1.pt", weights_only=True)
    assert all(torch.equal(q0[k], q1[k]) for k in q0)
    assert not torch.equal(q0["score_fr.weight"], p0["score_fr.weight"])
    # a time budget: rank 0's clock decides for all, so both stop at the same iteration (no rank left waiting in an
    # all-reduce) with the same clock-following lr, and their weights stay equal
    timed = tmp_path / "timed"
    torchrun(str(script), str(timed), "100000", "4s", cwd=tmp_path)
    t0 = torch.load(timed / "params-rank0.pt", weights_only=True)
    t1 = torch.load(timed / "params-rank1.pt", weights_only=True)
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    ckpt = torch.load(timed / "last.pt", weights_only=True)
    assert ckpt["follows_clock"] and 0 < ckpt["iteration"] < 100000


def test_distributed_evaluation_equals_single_process(tmp_path):
    assert main(["train", *TINY, "--max-iters", "3", "--val-every", "100", "--out", str(tmp_path / "run")]) == 0
    ckpt = tmp_path / "run" / "best.pt"
    assert main(["evaluate", str(ckpt), "--out", str(tmp_path / "single"), "--amp", "none"]) == 0
    torchrun("-m", "fcnseg", "evaluate", str(ckpt), "--out", str(tmp_path / "multi"), "--amp", "none", cwd=tmp_path)
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    multi = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert single["images"] == multi["images"] == 5
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "per_class", "per_image_mean_iou"):
        assert single[key] == multi[key], key
