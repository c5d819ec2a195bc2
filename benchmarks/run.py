"""fcnseg side by side with pytorch-fcn (torchfcn FCN8s) and torchvision's fcn_resnet50, in one command:

    python benchmarks/run.py [--quick] [--out BENCHMARKS.md]

(a) inference latency, (b) training-step time and bf16-vs-fp32 loss after 20 steps, (c) peak training memory (each
configuration in a fresh subprocess so RSS high-water marks don't mix), (d) data-loader throughput. Writes the
table, a bar chart (benchmarks/benchmarks.png), the machine, versions, load averages and profiles to --out.
Timings are the minimum of several repeats after a warm-up (least disturbed by other load on a shared machine).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fcnseg import build_model  # noqa: E402
from fcnseg.benchmark import reset_peak_rss, peak_rss_mib, time_fn, train_step  # noqa: E402
from fcnseg.inference import Predictor  # noqa: E402
from fcnseg.provenance import provenance, summary  # noqa: E402
from fcnseg.runtime import cpu_model  # noqa: E402


def import_torchfcn():
    """pytorch-fcn's models without its training-time dependencies (as tests/conftest.py does): a bare package
    module and an empty stand-in for the Chainer-era ``fcn`` package its models import only for downloads."""
    if "torchfcn.models" in sys.modules:  # already imported through the bare package below
        return sys.modules["torchfcn.models"]
    spec = importlib.util.find_spec("torchfcn")
    if spec is None:
        raise SystemExit("torchfcn is not installed: pip install --no-deps torchfcn==1.9.7")
    pkg = types.ModuleType("torchfcn")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("torchfcn", pkg)
    sys.modules.setdefault("fcn", types.ModuleType("fcn"))
    return importlib.import_module("torchfcn.models")


def randomize_scores(model, seed=0):
    """A fresh FCN head scores zero everywhere; random score layers make outputs, argmax and losses non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.score_layers():
            getattr(model, name).weight.normal_(0, 0.01, generator=g)
    return model


def fcnseg_model(geometry="aligned", num_classes=21, seed=0):
    torch.manual_seed(seed)
    return randomize_scores(build_model("fcn8s", backbone="vgg16", num_classes=num_classes, geometry=geometry), seed)


def torchfcn_model(num_classes=21, seed=0):
    """pytorch-fcn FCN8s (its own caffe geometry) holding the same random weights as fcnseg's caffe model
    (its own init zeroes every convolution, which would make outputs meaningless)."""
    from fcnseg.weights.pytorch_fcn import to_pytorch_fcn
    net = import_torchfcn().FCN8s(n_class=num_classes)
    net.load_state_dict(to_pytorch_fcn(fcnseg_model("caffe", num_classes, seed)))
    return net


def synthetic_batch(n, size, num_classes=None):
    from fcnseg.data import get_dataset
    ds = get_dataset("synthetic", None, "val", length=n, size=size)
    images, masks = zip(*(ds[i] for i in range(n)))
    masks = torch.stack([m.as_subclass(torch.Tensor) for m in masks])
    return torch.stack([i.as_subclass(torch.Tensor) for i in images]), masks


# ---------------------------------------------------------------------------------------------- measurements
def infer_fn(model, x, amp="none", channels_last=True, compile=False, calibration=None):  # noqa: A002
    p = Predictor(model, "cpu", amp=amp, channels_last=channels_last, compile=compile, calibration=calibration)
    return lambda: p(x)


def plain_infer_fn(model, x, key=None):
    model.eval()

    def run():
        with torch.inference_mode():
            out = model(x)
        return out[key] if key else out
    return run


def child_train(spec: dict) -> dict:
    """One training configuration in this (fresh) process: step times and the RSS high-water mark."""
    torch.manual_seed(0)
    n, size = spec["batch"], spec["size"]
    rss0 = peak_rss_mib()
    if spec["impl"] == "torchfcn":  # its own init zeroes every conv: random weights in place, no extra copy
        model = import_torchfcn().FCN8s(n_class=21)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        x = torch.randn(n, 3, size, size) * 50
    else:
        model = fcnseg_model()
        if spec.get("checkpointing"):
            from fcnseg.models.activation_checkpointing import enable_activation_checkpointing
            enable_activation_checkpointing(model)
        x = torch.randn(n, 3, size, size)
    y = torch.randint(0, 21, (n, size, size))
    rss_model = peak_rss_mib()
    step = train_step(model, x, y, amp=spec.get("amp", "none"), channels_last=spec.get("channels_last", False),
                      fused=spec.get("fused", False), lr=1e-4, step_in_backward=spec.get("step_in_backward", False))
    # the first step allocates the optimizer state (momentum buffers) on top of everything else; the steady-state
    # peak is that of a later step, measured after restarting the high-water mark
    first = time_fn(step, repeats=1, warmup=0)
    peak_first = peak_rss_mib()
    steady = reset_peak_rss()
    times = time_fn(step, repeats=spec["repeats"], warmup=spec.get("warmup", 1) - 1) if spec["repeats"] else first
    return {"times": times, "peak_mib": peak_rss_mib() if steady else peak_first, "peak_first_mib": peak_first,
            "steady": steady, "rss_start_mib": rss0, "rss_model_mib": rss_model}


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def loss_curve(amp: str, images, masks, steps: int) -> list[float]:
    from fcnseg.normalization import IMAGENET
    model = fcnseg_model(num_classes=7)
    torch.manual_seed(1)  # same dropout masks for both precisions
    step = train_step(model, IMAGENET(images), masks, amp=amp, channels_last=True, fused=True, lr=1e-3)
    return [step() for _ in range(steps)]


def loader_throughput(workers: int, n: int) -> float:
    from fcnseg.data import get_dataset
    from fcnseg.data.transforms import build_transforms, pad_collate
    ds = get_dataset("synthetic", None, "train", size=(512, 512), transforms=build_transforms(True, crop_size=512))
    dl = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(n + 4 * max(workers, 1))), batch_size=1,
                                     num_workers=workers, collate_fn=pad_collate)
    it = iter(dl)
    for _ in range(2 * max(workers, 1)):  # warm-up: workers started and their first samples decoded
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    rate = n / (time.perf_counter() - t0)
    del it
    return rate


def gflop(fn) -> float:
    """Convolution and matmul GFLOP of one call of ``fn`` (torch.utils.flop_counter; forward and any backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def train_gflop(model, x, y) -> float:
    """GFLOP of one training step's forward + backward (the optimizer's element-wise update is not counted)."""
    from fcnseg.train.loop import pixel_loss

    def step():
        model.zero_grad(set_to_none=True)
        out = model(x)
        pixel_loss(out if torch.is_tensor(out) else out["out"], y).backward()
    return gflop(step)


def gemm_ceiling(dtype=torch.float32, n=2048, repeats=5) -> float:
    """GFLOP/s of a large square matmul: what this machine's BLAS reaches, the ceiling for convolutions."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(time_fn(lambda: torch.mm(a, b), repeats=repeats, warmup=0))
    return 2 * n ** 3 / best / 1e9


def profile_table(fn, rows=12) -> str:
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36)


# ---------------------------------------------------------------------------------------------- report
def machine() -> dict:
    cpu = cpu_model() or "unknown"
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    except (OSError, StopIteration):
        isa = []
    import torchvision
    try:
        from importlib.metadata import version
        tfcn = version("torchfcn")
    except Exception:
        tfcn = "absent"
    return {"cpu": cpu, "isa": ", ".join(isa), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torchfcn": tfcn, "platform": platform.platform(),
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = {}
    for r in rows:
        if r.get("chart"):
            groups.setdefault(r["chart"], []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2))
    for ax, (title, rs) in zip(axes if len(groups) > 1 else [axes], groups.items()):
        colors = ["#1f77b4" if r["impl"].startswith("fcnseg") else "#ff7f0e" for r in rs]
        ax.barh(range(len(rs)), [r["value"] for r in rs], color=colors)
        ax.set_yticks(range(len(rs)), [r["label"] for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        for i, r in enumerate(rs):
            ax.text(r["value"], i, f" {r['value']:.3g}", va="center", fontsize=7)
    fig.suptitle("fcnseg (blue) vs peers (orange); lower is better except images/s", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and fewer repeats (a smoke run, < 3 min)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_train(json.loads(args.child))))
        return
    t_start = time.monotonic()
    load_start = os.getloadavg()
    quick = args.quick
    S_INF = 128 if quick else 500
    S_TR, B_SMALL, B_LARGE = (64, 1, 2) if quick else (256, 2, 8)
    R_INF, R_TR, R_MEM = (1, 1, 1) if quick else (3, 2, 3)
    STEPS, S_LOSS = (3, 64) if quick else (20, 96)
    rows: list[dict] = []  # one per measured figure
    extra: dict = {}

    def log(msg):
        print(f"[{time.monotonic() - t_start:6.0f}s] {msg}", flush=True)

    # (a) inference -------------------------------------------------------------------------------------
    log(f"(a) inference 1×3×{S_INF}×{S_INF}")
    from fcnseg.normalization import CAFFE_BGR, IMAGENET
    imgs, _ = synthetic_batch(5, (S_INF, S_INF))
    img, calib = imgs[:1], imgs[1:]  # int8 calibrates on 4 other scenes than the one it is timed and scored on
    x_caffe, x_im = CAFFE_BGR(img), IMAGENET(img)
    tfcn = torchfcn_model()
    runs = {}
    runs["pytorch-fcn FCN8s fp32"] = ("pytorch-fcn", plain_infer_fn(tfcn, x_caffe))
    aligned = fcnseg_model("aligned")
    runs["fcnseg aligned bf16+CL"] = ("fcnseg", infer_fn(copy.deepcopy(aligned), x_im, "bf16"))
    runs["fcnseg aligned fp32+CL"] = ("fcnseg", infer_fn(copy.deepcopy(aligned), x_im, "none"))
    runs["fcnseg aligned int8"] = ("fcnseg", infer_fn(aligned, x_im, "int8", calibration=[IMAGENET(calib)]))
    caffe = fcnseg_model("caffe")
    runs["fcnseg caffe bf16+CL"] = ("fcnseg", infer_fn(copy.deepcopy(caffe), x_caffe, "bf16"))
    runs["fcnseg caffe fp32+CL"] = ("fcnseg", infer_fn(copy.deepcopy(caffe), x_caffe, "none"))
    runs["fcnseg caffe int8"] = ("fcnseg", infer_fn(caffe, x_caffe, "int8", calibration=[CAFFE_BGR(calib)]))
    from torchvision.models.segmentation import fcn_resnet50
    torch.manual_seed(0)
    tv = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    runs["torchvision fcn_resnet50 fp32"] = ("torchvision", plain_infer_fn(tv, x_im, "out"))
    for fn in (f for _, f in runs.values()):  # warm every configuration first, then interleave the repeats so
        fn()                                  # that load from other jobs hits all of them alike
    times = {k: [] for k in runs}
    for _ in range(R_INF):
        for k, (_, fn) in runs.items():
            times[k] += time_fn(fn, repeats=1, warmup=0)
    inf = {k: min(v) for k, v in times.items()}
    for k, v in times.items():
        rows.append({"section": "a", "label": k, "impl": runs[k][0], "value": min(v) * 1e3,
                     "median": sorted(v)[len(v) // 2] * 1e3, "unit": "ms", "chart": f"inference 1×{S_INF}² (ms)"})
        log(f"  {k}: min {min(v) * 1e3:.0f} ms")
    with torch.inference_mode():
        ref = runs["fcnseg caffe fp32+CL"][1]().argmax(1)
        extra["agree_bf16"] = (runs["fcnseg caffe bf16+CL"][1]().argmax(1) == ref).float().mean().item() * 100
        extra["agree_peer"] = (tfcn.eval()(x_caffe).argmax(1) == ref).float().mean().item() * 100
        ref_aligned = runs["fcnseg aligned fp32+CL"][1]().argmax(1)
        extra["agree_aligned_bf16"] = (runs["fcnseg aligned bf16+CL"][1]().argmax(1) ==
                                       ref_aligned).float().mean().item() * 100
        extra["agree_int8"] = (runs["fcnseg caffe int8"][1]().argmax(1) == ref).float().mean().item() * 100
        extra["agree_aligned_int8"] = (runs["fcnseg aligned int8"][1]().argmax(1) ==
                                       ref_aligned).float().mean().item() * 100
    log(f"  caffe argmax agreement bf16 vs fp32 {extra['agree_bf16']:.3f}%, vs pytorch-fcn {extra['agree_peer']:.3f}%, "
        f"int8 vs fp32 {extra['agree_int8']:.3f}% (aligned {extra['agree_aligned_int8']:.3f}%)")
    if not args.no_compile and not quick:
        try:
            t0 = time.perf_counter()
            cfn = infer_fn(copy.deepcopy(aligned), x_im, "none", compile=True)
            cfn()
            extra["compile_s"] = time.perf_counter() - t0
            pairs = {"eager": runs["fcnseg aligned fp32+CL"][1], "compiled": cfn}
            ct = {k: [] for k in pairs}
            for _ in range(R_INF):
                for k, fn in pairs.items():
                    ct[k] += time_fn(fn, repeats=1, warmup=0)
            extra["compile"] = {k: min(v) * 1e3 for k, v in ct.items()}
            log(f"  torch.compile: first call {extra['compile_s']:.0f} s, {extra['compile']}")
        except Exception as e:  # report, don't fail the run
            extra["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log(f"  torch.compile failed: {extra['compile_error']}")
    del runs, tfcn, tv
    # (b) + (c) training, each configuration in a fresh process -----------------------------------------
    configs = {
        "pytorch-fcn FCN8s fp32": {"impl": "torchfcn"},
        "fcnseg aligned bf16+CL+fused": {"impl": "fcnseg", "amp": "bf16", "channels_last": True, "fused": True},
        "fcnseg aligned fp32+CL+fused": {"impl": "fcnseg", "amp": "none", "channels_last": True, "fused": True},
        "fcnseg aligned fp32+CL+fused+sib": {"impl": "fcnseg", "amp": "none", "channels_last": True, "fused": True,
                                             "step_in_backward": True},
        # NCHW: on CPUs without AVX-512 oneDNN trains faster in it (`fcnseg train`'s channels_last=auto picks it)
        "fcnseg aligned fp32+fused": {"impl": "fcnseg", "amp": "none", "channels_last": False, "fused": True},
        "fcnseg aligned fp32+fused+sib": {"impl": "fcnseg", "amp": "none", "channels_last": False, "fused": True,
                                          "step_in_backward": True},
    }
    mem_configs = {
        "fcnseg aligned bf16+CL+ckpt": {"impl": "fcnseg", "amp": "bf16", "channels_last": True, "fused": True,
                                        "checkpointing": True},
        "fcnseg aligned fp32+CL+ckpt": {"impl": "fcnseg", "amp": "none", "channels_last": True, "fused": True,
                                        "checkpointing": True},
        "fcnseg aligned bf16+CL+ckpt+sib": {"impl": "fcnseg", "amp": "bf16", "channels_last": True, "fused": True,
                                            "checkpointing": True, "step_in_backward": True},
        "fcnseg aligned fp32+CL+ckpt+sib": {"impl": "fcnseg", "amp": "none", "channels_last": True, "fused": True,
                                            "checkpointing": True, "step_in_backward": True},
        # NCHW, what channels_last=auto trains in without AVX-512 (AVX2 EPYC: 2554 MiB vs 2881 channels_last)
        "fcnseg aligned fp32+ckpt+sib": {"impl": "fcnseg", "amp": "none", "channels_last": False, "fused": True,
                                         "checkpointing": True, "step_in_backward": True},
    }
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # emulated bf16 is an order of magnitude slower (AVX2 EPYC: caffe inference 34.1 s vs 2.8 s fp32), and a
        # batch-8 step would take minutes: training configurations run where bf16 is native only
        for c in (configs, mem_configs):
            for name in [n for n in c if "bf16" in n]:
                del c[name]
        extra["bf16_training_skipped"] = True
        log("(b/c) no native bf16 on this CPU: bf16 training configurations skipped")
    # RSS high-water marks vary by a few tens of MiB from process to process (allocator state): the peer and the
    # checkpointed configurations the memory target compares are measured in R_MEM fresh processes each (minimum)
    mem_repeated = {"pytorch-fcn FCN8s fp32"} | {n for n in mem_configs if "ckpt+sib" in n}
    train = {}
    for batch in (B_SMALL, B_LARGE):
        todo = dict(configs, **(mem_configs if batch == B_LARGE else {}))
        for name, spec in todo.items():
            log(f"(b/c) training {name} {batch}×3×{S_TR}² (fresh process)")
            # the large batch is measured on its first step only (peak memory needs no more; time budget)
            small = batch == B_SMALL
            r = run_child(dict(spec, batch=batch, size=S_TR, repeats=R_TR if small else 1, warmup=1))
            if not small and name in mem_repeated:  # the peaks the memory target compares: min of R_MEM processes
                peaks = [r["peak_mib"]] + [run_child(dict(spec, batch=batch, size=S_TR, repeats=1, warmup=1))["peak_mib"]
                                           for _ in range(R_MEM - 1)]
                r = dict(r, peak_mib=min(peaks), peaks=peaks)
            train[(name, batch)] = r
            impl = "pytorch-fcn" if spec["impl"] == "torchfcn" else "fcnseg"
            rows.append({"section": "b", "label": f"{name} b{batch}", "impl": impl, "value": min(r["times"]),
                         "median": sorted(r["times"])[len(r["times"]) // 2], "unit": "s",
                         "chart": f"train step {S_TR}² (s)"})
            if batch == B_LARGE:
                rows.append({"section": "c", "label": f"{name} b{batch}", "impl": impl, "value": r["peak_mib"],
                             "base": r["rss_model_mib"], "first": r["peak_first_mib"], "peaks": r.get("peaks"), "steady": r["steady"], "unit": "MiB", "chart": f"peak train RSS b{batch} (MiB)"})
            log(f"  min {min(r['times']):.2f} s, peak RSS {r['peak_mib']:.0f} MiB"
                + (f" (min of {', '.join(f'{v:.0f}' for v in r['peaks'])})" if len(r.get("peaks") or []) > 1 else ""))
    log(f"(b) loss after {STEPS} steps, bf16 vs fp32")
    images, masks = synthetic_batch(2, (S_LOSS, S_LOSS))
    curves = {amp: loss_curve(amp, images, masks, STEPS) for amp in ("none", "bf16")}
    extra["loss"] = {"fp32": curves["none"], "bf16": curves["bf16"]}
    # (d) loader -------------------------------------------------------------------------------------------
    n_img = 4 if quick else 16
    for w in (0, 1, 2):
        rate = loader_throughput(w, n_img)
        rows.append({"section": "d", "label": f"{w} workers", "impl": "fcnseg", "value": rate,
                     "per_worker": rate / max(w, 1), "unit": "images/s", "chart": "loader 512² images/s"})
        log(f"(d) loader {w} workers: {rate:.1f} images/s")
    # arithmetic: how much work each implementation does, and the machine's matmul ceiling -------------------
    log("arithmetic (flop counts, GEMM ceiling)")
    xt, yt = torch.randn(B_SMALL, 3, S_TR, S_TR), torch.randint(0, 21, (B_SMALL, S_TR, S_TR))
    ours = fcnseg_model()
    extra["param_mib"] = sum(t.numel() * t.element_size() for t in ours.parameters()) / 2**20
    extra["gflop"] = {
        "train pytorch-fcn": train_gflop(torchfcn_model(), xt * 50, yt),
        "train fcnseg": train_gflop(ours, xt, yt),
        "infer pytorch-fcn": gflop(plain_infer_fn(torchfcn_model(), x_caffe)),
        "infer fcnseg aligned": gflop(plain_infer_fn(fcnseg_model("aligned").eval(), x_im)),
    }
    extra["gemm"] = {"fp32": gemm_ceiling(torch.float32), "bf16": gemm_ceiling(torch.bfloat16)}
    log(f"  {extra['gflop']}, GEMM GFLOP/s {extra['gemm']}")
    # profiles of where fcnseg's time goes -------------------------------------------------------------------
    log("profiles")
    prof = {}
    prof["fcnseg aligned fp32+CL inference"] = profile_table(infer_fn(copy.deepcopy(aligned), x_im, "none"))
    if not quick:
        prof["fcnseg aligned bf16+CL inference"] = profile_table(infer_fn(copy.deepcopy(aligned), x_im, "bf16"))
        prof["pytorch-fcn FCN8s fp32 inference"] = profile_table(plain_infer_fn(torchfcn_model(), x_caffe))
        step = train_step(fcnseg_model(), torch.randn(B_SMALL, 3, S_TR, S_TR), torch.randint(0, 21, (B_SMALL, S_TR, S_TR)),
                          amp="none", channels_last=True, fused=True)
        prof[f"fcnseg aligned fp32+CL+fused training step {B_SMALL}×{S_TR}²"] = profile_table(step)
    load_end = os.getloadavg()
    report = write_report(args, rows, train, extra, prof, machine(), load_start, load_end,
                          dict(S_INF=S_INF, S_TR=S_TR, B_SMALL=B_SMALL, B_LARGE=B_LARGE, R_INF=R_INF, R_TR=R_TR, R_MEM=R_MEM,
                               STEPS=STEPS, S_LOSS=S_LOSS), time.monotonic() - t_start)
    print(report)


def write_report(args, rows, train, extra, prof, mach, load_start, load_end, p, elapsed) -> str:
    val = {r["label"]: r["value"] for r in rows if r["section"] in "ab"}
    S_INF, S_TR, B_SMALL, B_LARGE = p["S_INF"], p["S_TR"], p["B_SMALL"], p["B_LARGE"]
    peer_inf = val["pytorch-fcn FCN8s fp32"]
    # a low-precision configuration counts only where it keeps its argmax agreement bar (int8: 99%, below which
    # its labels differ visibly from fp32's; caffe geometry: 99.9%, the parity the authors' nets are held to)
    agree = {"fcnseg aligned bf16+CL": extra["agree_aligned_bf16"], "fcnseg aligned int8": extra["agree_aligned_int8"],
             "fcnseg caffe bf16+CL": extra["agree_bf16"], "fcnseg caffe int8": extra["agree_int8"]}
    best_aligned = min((k for k in ("fcnseg aligned bf16+CL", "fcnseg aligned fp32+CL", "fcnseg aligned int8")
                        if agree.get(k, 100.0) >= 99.0), key=val.get)
    best_caffe = min((k for k in ("fcnseg caffe bf16+CL", "fcnseg caffe fp32+CL", "fcnseg caffe int8")
                      if agree.get(k, 100.0) >= 99.9), key=val.get)
    caffe_agree = agree.get(best_caffe, 100.0)
    peer_b = lambda b: val[f"pytorch-fcn FCN8s fp32 b{b}"]  # noqa: E731
    best_train = lambda b: min((k for k in (  # noqa: E731
        f"fcnseg aligned bf16+CL+fused b{b}", f"fcnseg aligned fp32+CL+fused b{b}", f"fcnseg aligned fp32+CL+fused+sib b{b}",
        f"fcnseg aligned fp32+fused b{b}", f"fcnseg aligned fp32+fused+sib b{b}") if k in val), key=val.get)
    mem = {r["label"]: r for r in rows if r["section"] == "c"}
    peer_mem = mem[f"pytorch-fcn FCN8s fp32 b{B_LARGE}"]["value"]
    best_ckpt = min((k for k in [f"fcnseg aligned {d}+CL+ckpt{s} b{B_LARGE}" for d in ("bf16", "fp32")
                                 for s in ("", "+sib")] + [f"fcnseg aligned fp32+ckpt+sib b{B_LARGE}"] if k in mem),
                    key=lambda k: mem[k]["value"])
    l32, l16 = extra["loss"]["fp32"][-1], extra["loss"]["bf16"][-1]
    loss_rel = abs(l16 - l32) / abs(l32) * 100
    met = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    targets = [
        (f"aligned inference 1×{S_INF}² ≥ 4.5× faster than pytorch-fcn fp32",
         f"{peer_inf / val[best_aligned]:.2f}× ({best_aligned})", met(peer_inf / val[best_aligned] >= 4.5)),
        (f"caffe-geometry inference ≥ 2.5× faster, argmax agreement ≥ 99.9%",
         f"{peer_inf / val[best_caffe]:.2f}× ({best_caffe}), agreement {caffe_agree:.3f}%",
         met(peer_inf / val[best_caffe] >= 2.5 and caffe_agree >= 99.9)),
        (f"training step {B_SMALL}×{S_TR}² ≥ 4× faster than pytorch-fcn",
         f"{peer_b(B_SMALL) / val[best_train(B_SMALL)]:.2f}× ({best_train(B_SMALL)})",
         met(peer_b(B_SMALL) / val[best_train(B_SMALL)] >= 4)),
        (f"peak training RSS b{B_LARGE} ≤ 0.5× pytorch-fcn with checkpointing",
         f"{mem[best_ckpt]['value'] / peer_mem:.3f}× ({best_ckpt})", met(mem[best_ckpt]["value"] / peer_mem <= 0.5)),
        (f"bf16 loss after {p['STEPS']} steps within 2% of fp32", f"{loss_rel:.2f}% ({l16:.4f} vs {l32:.4f})",
         met(loss_rel <= 2)),
    ]
    cmd = "python benchmarks/run.py" + (" --quick" if args.quick else "") + (
        " --no-compile" if args.no_compile else "") + (
        f" --out {shlex.quote(os.path.relpath(args.out, ROOT))}" if Path(args.out).resolve() != ROOT / "BENCHMARKS.md"
        else "")
    if Path(args.out).resolve() == ROOT / "BENCHMARKS.md":
        png = ROOT / "benchmarks" / ("benchmarks-quick.png" if args.quick else "benchmarks.png")
    else:  # another machine's report keeps its own chart beside it (BENCHMARKS.md's stays as it is)
        png = Path(args.out).resolve().with_suffix(".png")
    chart(rows, png)
    prov = provenance("cpu", command=shlex.split(cmd))
    L = [f"# fcnseg benchmarks{' (quick smoke run: small sizes, few repeats)' if args.quick else ''}", "",
         f"Command: `{cmd}` — one process (training configurations each in a fresh child process so RSS high-water "
         f"marks don't mix), {elapsed / 60:.1f} min, finished {prov['date']}.", "",
         f"Provenance: {summary(prov)}.", "", f"<!-- provenance: {json.dumps(prov)} -->", "",
         f"Machine: {mach['cpu']} ({mach['isa']}), {mach['cores']} cores, torch threads {mach['threads']}; "
         f"oneDNN native bf16: {mach['mkldnn_bf16']}; {mach['platform']}.  ",
         f"Versions: python {mach['python']}, torch {mach['torch']}, torchvision {mach['torchvision']}, "
         f"torchfcn {mach['torchfcn']}.  ",
         f"Load average (1/5/15 min): start {', '.join(f'{x:.2f}' for x in load_start)}; end "
         f"{', '.join(f'{x:.2f}' for x in load_end)} — the machine was shared with other jobs, so every timing is "
         f"the minimum of {p['R_INF']} (inference) / {p['R_TR']} (training) repeats after a warm-up; inference "
         f"repeats are interleaved across configurations so that outside load hits them alike.", "",
         "Inputs: synthetic street scenes (fcnseg's `synthetic` dataset) normalised for each model; 21 classes; "
         "random backbone weights (torchvision init; pytorch-fcn holds the same weights converted) and random "
         "score layers (a fresh head predicts zeros everywhere, which would make argmax agreement meaningless). "
         "CL = channels_last; fused = torch's fused SGD; ckpt = fcnseg activation checkpointing; sib = step in "
         "backward (each parameter updated as soon as its gradient is complete, then the gradient freed: "
         "`fcnseg train --step-in-backward`).", "",
         "## Targets", "", "| target | measured | |", "|---|---|---|"]
    L += [f"| {a} | {b} | {c} |" for a, b, c in targets]
    L += ["", f"## (a) Inference, 1×3×{S_INF}×{S_INF}", "", "| configuration | min ms | median ms | peer ÷ this |",
          "|---|---:|---:|---:|"]
    for r in rows:
        if r["section"] == "a":
            L.append(f"| {r['label']} | {r['value']:.0f} | {r['median']:.0f} | {peer_inf / r['value']:.2f}× |")
    L += ["", f"Argmax agreement, fcnseg caffe geometry: bf16+CL vs its own fp32 {extra['agree_bf16']:.3f}%; fp32 vs "
          f"pytorch-fcn fp32 (same weights) {extra['agree_peer']:.3f}%; int8 vs its own fp32 {extra['agree_int8']:.3f}%. "
          f"Aligned bf16 vs fp32: {extra['agree_aligned_bf16']:.3f}%; int8 vs fp32 {extra['agree_aligned_int8']:.3f}%. "
          "int8 = `Predictor(amp=\"int8\")`: the backbone quantized (x86 backend, per-channel weights, histogram-"
          "calibrated activations on 4 other synthetic scenes), the head in fp32. A configuration counts for a "
          "target only when its agreement clears the bar (int8 ≥ 99%, caffe geometry ≥ 99.9%)."]
    if "compile" in extra:
        c = extra["compile"]
        L += ["", f"torch.compile (Predictor(compile=True), aligned fp32+CL): first call {extra['compile_s']:.0f} s; "
              f"then min {c['compiled']:.0f} ms vs eager {c['eager']:.0f} ms "
              f"({c['eager'] / c['compiled']:.2f}× {'faster' if c['compiled'] < c['eager'] else 'i.e. no gain'})."]
    elif "compile_error" in extra:
        L += ["", f"torch.compile failed: `{extra['compile_error']}`."]
    L += ["", f"## (b) Training step (SGD momentum, cross-entropy), {S_TR}×{S_TR}", "",
          "| configuration | batch | min s | median s | images/s | pytorch-fcn ÷ this |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["section"] == "b":
            b = int(r["label"].rsplit(" b", 1)[1])
            L.append(f"| {r['label'].rsplit(' b', 1)[0]} | {b} | {r['value']:.2f} | {r['median']:.2f} | "
                     f"{b / r['value']:.2f} | {peer_b(b) / r['value']:.2f}× |")
    L += ["", f"Batch {B_LARGE}: one step after a warm-up step per configuration; batch {B_SMALL}: min of "
          f"{p['R_TR']} steps after a warm-up step." + (
              " bf16 training configurations were skipped: this CPU has no native bf16 (emulated bf16 is an order "
              "of magnitude slower, see (a))." if extra.get("bf16_training_skipped") else ""), "",
          f"Loss on a fixed 2×3×{p['S_LOSS']}×{p['S_LOSS']} synthetic batch (7 classes, SGD lr 1e-3 momentum 0.9), fcnseg aligned "
          f"+CL: step 1 fp32 {extra['loss']['fp32'][0]:.4f} / bf16 {extra['loss']['bf16'][0]:.4f}; after "
          f"{p['STEPS']} steps fp32 {l32:.4f} / bf16 {l16:.4f}: relative difference {loss_rel:.2f}%."]
    steady = all(r.get("steady") for r in rows if r["section"] == "c")
    L += ["", f"## (c) Peak training memory, batch {B_LARGE}×3×{S_TR}×{S_TR} (process RSS high-water mark, "
          f"fresh process each)", "",
          ("Peak = a training step once the optimizer state exists: the high-water mark is restarted "
           "(`/proc/self/clear_refs`) after a first step, whose own peak — it also allocates the momentum buffers — "
           "is in the last column." if steady else
           "Peak = the whole process (this kernel cannot restart the high-water mark), first step included."), "",
          f"Rows with several figures: the minimum of {p['R_MEM']} fresh processes (the high-water mark varies by tens of "
          "MiB between processes).", "",
          "| configuration | peak MiB | RSS after building the model, MiB | this ÷ pytorch-fcn | first-step peak MiB |",
          "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["section"] == "c":
            each = f" (min of {', '.join(f'{v:.0f}' for v in r['peaks'])})" if len(r.get("peaks") or []) > 1 else ""
            L.append(f"| {r['label'].rsplit(' b', 1)[0]} | {r['value']:.0f}{each} | {r['base']:.0f} | "
                     f"{r['value'] / peer_mem:.3f}× | {r['first']:.0f} |")
    floor = mem[best_ckpt]["base"] + extra["param_mib"]
    L += ["", f"Floor for SGD with momentum: the RSS after building the model (libraries + fp32 parameters, "
          f"{mem[best_ckpt]['base']:.0f} MiB) plus one momentum buffer per parameter ({extra['param_mib']:.0f} MiB) "
          f"is {floor:.0f} MiB = {floor / peer_mem:.2f}× pytorch-fcn's peak before any activation or gradient; "
          f"0.5× leaves {peer_mem / 2 - floor:.0f} MiB for activations, gradients and workspace."]
    L += ["", "## (d) Data loader, synthetic 512×512 with training augmentation (scale, crop 512, flip)", "",
          "| workers | images/s | images/s per worker |", "|---:|---:|---:|"]
    for r in rows:
        if r["section"] == "d":
            L.append(f"| {r['label'].split()[0]} | {r['value']:.1f} | {r['per_worker']:.1f} |")
    g, gemm = extra["gflop"], extra["gemm"]
    rate = lambda work, seconds: work / seconds  # noqa: E731  (GFLOP/s)
    tr_peer, tr_ours = val[f"pytorch-fcn FCN8s fp32 b{B_SMALL}"], val[best_train(B_SMALL)]
    inf_peer, inf_ours = peer_inf / 1e3, val["fcnseg aligned fp32+CL"] / 1e3
    L += ["", "## Arithmetic: the work each implementation does, and this machine's ceiling", "",
          "Convolution + matmul FLOPs counted by `torch.utils.flop_counter` (training: forward + backward; the "
          "optimizer's element-wise update and the loss are not counted), and a 2048² matmul as the ceiling a "
          "convolution can reach here:", "",
          "| work | pytorch-fcn GFLOP | fcnseg GFLOP | ratio | pytorch-fcn GFLOP/s | fcnseg GFLOP/s |",
          "|---|---:|---:|---:|---:|---:|",
          f"| inference 1×{S_INF}² (fcnseg aligned fp32) | {g['infer pytorch-fcn']:.0f} | {g['infer fcnseg aligned']:.0f} | "
          f"{g['infer pytorch-fcn'] / g['infer fcnseg aligned']:.2f}× | {rate(g['infer pytorch-fcn'], inf_peer):.0f} | "
          f"{rate(g['infer fcnseg aligned'], inf_ours):.0f} |",
          f"| training step {B_SMALL}×{S_TR}² | {g['train pytorch-fcn']:.0f} | {g['train fcnseg']:.0f} | "
          f"{g['train pytorch-fcn'] / g['train fcnseg']:.2f}× | {rate(g['train pytorch-fcn'], tr_peer):.0f} | "
          f"{rate(g['train fcnseg'], tr_ours):.0f} |", "",
          f"2048² matmul on this machine: fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.3g} GFLOP/s. "
          f"The aligned 4.5× inference target needs {g['infer fcnseg aligned'] * 4.5 / inf_peer:.0f} GFLOP/s in "
          f"fp32 ({g['infer fcnseg aligned'] * 4.5 / inf_peer / gemm['fp32']:.1f}× the fp32 matmul ceiling) — "
          f"reachable only with fewer bits (int8). The 4× training target needs "
          f"{g['train fcnseg'] * 4 / tr_peer:.0f} GFLOP/s "
          f"({g['train fcnseg'] * 4 / tr_peer / gemm['fp32']:.1f}× the fp32 matmul ceiling): the pad-100 input "
          f"gives pytorch-fcn only {g['train pytorch-fcn'] / g['train fcnseg']:.2f}× fcnseg's work per step, both "
          "carry the same fc6/fc7 (119 M parameters, a 411 MB fc6 weight gradient and its update every step)."]
    L += ["", f"![benchmarks]({os.path.relpath(png, Path(args.out).resolve().parent)})", "",
          "## Where the time goes (torch.profiler, top ops by self CPU time)", ""]
    for name, table in prof.items():
        L += [f"### {name}", "", "```", table.strip(), "```", ""]
    text = "\n".join(L) + "\n"
    out = Path(args.out)
    if out.is_file() and KEEP in out.read_text():  # sections other scripts wrote (benchmarks/decode.py) stay
        text += "\n" + KEEP + out.read_text().split(KEEP, 1)[1]
    out.write_text(text)
    return text


# the line below which BENCHMARKS.md holds figures from other scripts, kept when this report is regenerated
KEEP = "<!-- figures from other benchmark scripts: kept when benchmarks/run.py regenerates this file -->"


if __name__ == "__main__":
    main()
