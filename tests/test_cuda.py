"""CUDA paths (run by scripts/gpu_check.sh on a machine with a GPU; skipped elsewhere): fp16 training with the
GradScaler, bf16 autocast, SyncBatchNorm in a one-process nccl group, and GPU inference matching the CPU's."""
from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch

from fcnseg import build_model
from fcnseg.inference import Predictor

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _model(classes=5):
    torch.manual_seed(0)
    m = build_model("fcn8s", backbone="resnet18", num_classes=classes)
    with torch.no_grad():
        for name in m.score_layers():
            getattr(m, name).weight.normal_(0, 0.05)
    return m


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_training_through_the_trainer(amp, tmp_path):
    """``fcnseg train`` on the GPU: fp16 goes through the GradScaler (its scale is saved), bf16 through autocast."""
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    from fcnseg.cli import main
    from fcnseg.train.checkpoint import read_checkpoint
    out = tmp_path / "run"
    assert main(["train", "--recipe", "demo", "--max-iters", "40", "--amp", amp, "--device", "cuda",
                 "--out", str(out)]) == 0
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["config"]["amp"] == amp and ckpt["iteration"] == 40
    assert bool(ckpt["scaler"]) == (amp == "fp16")  # a GradScaler state only where fp16 needs one
    losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.8 * losses[0], losses  # it learns


def test_gpu_inference_matches_the_cpu():
    model = _model().eval()
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(1))
    cpu = Predictor(model, "cpu", amp="none")(x)
    gpu = Predictor(_model().eval(), "cuda", amp="none", channels_last=False)(x).cpu()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    agree = (gpu.argmax(1) == cpu.argmax(1)).float().mean().item()
    assert agree > 0.999, agree
    half = Predictor(_model().eval(), "cuda", amp="auto")(x).cpu()
    assert (half.argmax(1) == cpu.argmax(1)).float().mean().item() > 0.98


def test_sync_batchnorm_in_a_one_process_nccl_group():
    if not torch.distributed.is_nccl_available():
        pytest.skip("this PyTorch has no nccl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(_model()).cuda()
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        out = ddp(torch.randn(2, 3, 64, 64, device="cuda"))
        out.mean().backward()
        assert out.shape == (2, 5, 64, 64)
        assert all(p.grad is not None for p in ddp.parameters() if p.requires_grad)
    finally:
        torch.distributed.destroy_process_group()
