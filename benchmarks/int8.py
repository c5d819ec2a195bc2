"""int8 (ONNX Runtime static quantization) against float32 and bf16, on a trained checkpoint, in one run:

    python benchmarks/int8.py CKPT --root CAMVID_DIR [--calibration 32] [--out FILE]

(a) accuracy: the checkpoint's validation split scored single-scale, once per mode (torch fp32, torch bf16, ONNX
Runtime fp32, ONNX Runtime int8), int8 calibrated on ``--calibration`` training images (never the scored ones);
(b) speed: 1×3×360×480 and 1×3×500×500 forward passes of the same model in each mode; (c) FCN-8s VGG16 (aligned)
int8 against pytorch-fcn's FCN8s in fp32 at 1×3×500×500, the reference port's inference (random weights: speed only).
Timings are the minimum of ``--repeats`` after a warm-up; every ratio is against a peer timed in this same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fcnseg import build_model  # noqa: E402
from fcnseg.benchmark import time_fn  # noqa: E402
from fcnseg.data import get_dataset  # noqa: E402
from fcnseg.evaluation import evaluate, protocol_options  # noqa: E402
from fcnseg.inference import Predictor, resized_size  # noqa: E402
from fcnseg.metrics import scores  # noqa: E402
from fcnseg.onnxgraph import write_onnx  # noqa: E402
from fcnseg.provenance import provenance  # noqa: E402
from fcnseg.quantize import OnnxRuntimeModel  # noqa: E402
from fcnseg.runtime import _native_bf16  # noqa: E402
from fcnseg.train.checkpoint import model_from_checkpoint  # noqa: E402

MODES = ("torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8")


def calibration_batches(ckpt: dict, model, root: str, n: int, scale: float) -> list[torch.Tensor]:
    """``n`` training images, normalised and sized as the scored images reach the network."""
    cfg = ckpt.get("config") or {}
    data = get_dataset(cfg.get("data", "camvid"), root, cfg.get("train_split", "train"))
    step = max(1, len(data) // n)
    out = []
    for i in range(0, step * n, step):
        image = data[i][0].as_subclass(torch.Tensor)[None]
        size = resized_size(*image.shape[-2:], cfg["resize"]) if cfg.get("resize") else image.shape[-2:]
        size = tuple(max(1, round(s * scale)) for s in size)
        x = model.normalization(image.float())
        out.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True))
    return out


class _OrtPredictor(Predictor):
    """A Predictor whose forward pass is an ONNX Runtime session (fp32 graph or int8 graph)."""

    def __init__(self, model, runner):
        super().__init__(model, "cpu", amp="none", channels_last=False)
        self.forward = runner


def predictors(model, calib: list[torch.Tensor], tmp: Path) -> dict[str, Predictor]:
    fp32 = tmp / "fp32.onnx"
    write_onnx(model, fp32)
    out = {"torch fp32": Predictor(model, "cpu", amp="none"), "torch bf16": Predictor(model, "cpu", amp="bf16"),
           "onnxruntime fp32": _OrtPredictor(model, OnnxRuntimeModel(fp32)),
           "onnxruntime int8": Predictor(model, "cpu", amp="int8", calibration=calib)}
    if not _native_bf16():  # emulated: an order of magnitude slower, never what amp="auto" picks
        del out["torch bf16"]
    return out


def accuracy(preds: dict[str, Predictor], ckpt: dict, root: str, scale: float) -> dict[str, tuple[float, float]]:
    cfg = ckpt.get("config") or {}
    data = get_dataset(cfg.get("data", "camvid"), root, cfg.get("val_split", "val"))
    opts = protocol_options(ckpt, flip=False, scales=[scale])
    out = {}
    for name, p in preds.items():
        t0 = time.perf_counter()
        m = evaluate(p, data, num_classes=len(ckpt["classes"]), progress=False, **opts)
        out[name] = (scores(m["hist"])["mean_iou"], time.perf_counter() - t0)
        print(f"  {name}: mIoU {out[name][0]:.4f} ({out[name][1]:.1f} s)", flush=True)
    return out


def speed(preds: dict[str, Predictor], sizes, repeats: int) -> dict[tuple[str, tuple], float]:
    out = {}
    for size in sizes:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        for name, p in preds.items():
            out[name, size] = min(time_fn(lambda: p(x), repeats=repeats, warmup=1))
            print(f"  {name} {size}: {out[name, size] * 1000:.1f} ms", flush=True)
    return out


def vgg_vs_pytorch_fcn(calib: list[torch.Tensor], repeats: int, tmp: Path) -> dict[str, float]:
    from run import randomize_scores, torchfcn_model  # benchmarks/run.py: the peer built as there
    x = torch.randn(1, 3, 500, 500, generator=torch.Generator().manual_seed(0))
    vgg = randomize_scores(build_model("fcn8s", backbone="vgg16", num_classes=21, geometry="aligned").eval())
    peer = torchfcn_model()
    runs = {"pytorch-fcn FCN8s fp32": lambda: peer(x * 50)}
    p32 = Predictor(vgg, "cpu", amp="none")
    runs["fcnseg FCN-8s VGG16 fp32"] = lambda: p32(x)
    p8 = Predictor(vgg, "cpu", amp="int8", calibration=[c[:, :, :256, :256] for c in calib[:8]])
    runs["fcnseg FCN-8s VGG16 int8"] = lambda: p8(x)
    out = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            out[name] = min(time_fn(fn, repeats=repeats, warmup=1))
            print(f"  {name}: {out[name] * 1000:.0f} ms", flush=True)
    ref = p32(x).argmax(1)
    out["agreement"] = (p8(x).argmax(1) == ref).float().mean().item()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--root", required=True, help="the dataset the checkpoint was trained on")
    ap.add_argument("--calibration", type=int, default=32, help="training images for int8 calibration")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0],
                    help="single-scale evaluations (x the recipe's input size; camvid: 1 → 180×240, 2 → 360×480)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-vgg", action="store_true", help="skip part (c)")
    ap.add_argument("--out", help="append the markdown report to this file")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, ckpt = model_from_checkpoint(args.checkpoint)
    model = model.eval().float()
    lines = [f"int8 on `{args.checkpoint}` ({ckpt.get('iteration')} iterations, model "
             f"{ckpt['model_spec'].get('arch')}/{ckpt['model_spec'].get('backbone')}); provenance: "
             f"{provenance(torch.device('cpu'), command=sys.argv)}", ""]
    acc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            print(f"accuracy, scale {scale}:", flush=True)
            calib = calibration_batches(ckpt, model, args.root, args.calibration, scale)
            acc[scale] = accuracy(predictors(model, calib, Path(tmp)), ckpt, args.root, scale)
        print("speed:", flush=True)
        fast = speed(predictors(model, calib, Path(tmp)), [(360, 480), (500, 500)], args.repeats)
        vgg = None if args.skip_vgg else vgg_vs_pytorch_fcn(calib, args.repeats, Path(tmp))
    if not _native_bf16():
        lines += ["torch bf16 not measured: this CPU has no native bf16 (torch emulates it).", ""]
    lines += ["| mode | " + " | ".join(f"val mIoU, scale {s}" for s in args.scales)
              + " | 1×3×360×480 ms | 1×3×500×500 ms | speed-up vs torch fp32 (360×480) |",
              "|---|" + "---|" * (len(args.scales) + 3)]
    base = fast["torch fp32", (360, 480)]
    for m in (m for m in MODES if (m, (360, 480)) in fast):
        cells = [f"{acc[s][m][0]:.4f} ({acc[s][m][0] - acc[s]['torch fp32'][0]:+.4f})" for s in args.scales]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {fast[m, (360, 480)] * 1000:.1f} | "
                     f"{fast[m, (500, 500)] * 1000:.1f} | {base / fast[m, (360, 480)]:.2f}× |")
    if vgg:
        peer = vgg["pytorch-fcn FCN8s fp32"]
        lines += ["", "| 1×3×500×500, random weights | ms | speed-up vs pytorch-fcn fp32 |", "|---|---|---|"]
        lines += [f"| {k} | {v * 1000:.0f} | {peer / v:.2f}× |" for k, v in vgg.items() if k != "agreement"]
        lines.append(f"\nFCN-8s VGG16 int8 vs its fp32, argmax agreement: {vgg['agreement']:.4%}")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
