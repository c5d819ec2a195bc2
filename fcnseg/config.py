"""Training configuration: one dataclass, named recipes, and YAML / flag overrides (recipe → YAML → flags)."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class TrainConfig:
    # data
    data: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    val_data: str | None = None  # validate on another reader (the paper's seg11valid); default: ``data``
    data_options: dict = field(default_factory=dict)
    val_data_options: dict = field(default_factory=dict)  # overrides data_options for validation (e.g. length)
    crop_size: int | list | None = None
    resize: int | list | None = None  # fixed resize before augmentation (FCN.tensorflow's 224-256 px)
    scale_range: list | None = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    color_jitter: float = 0.0
    # progressive resizing: [[progress, scale], ...] — from that share of the run (iterations or time budget, as the lr
    # schedule counts it) each augmented batch is resized by ``scale`` (images bilinear, masks nearest), e.g.
    # [[0, 0.67], [0.6, 1]] trains the first 60% at two thirds of the crop size: cheaper steps, more of them
    size_schedule: list | None = None
    # test-time protocol `fcnseg evaluate` / `predict` default to for this run's checkpoints (flags override);
    # in-training validation stays single-scale and unflipped (it runs every val_every iterations)
    eval_flip: bool = False
    eval_scales: list | None = None
    workers: int = 2
    cache_decoded: str | bool = "auto"  # decode training samples once into RAM (auto: when a fixed resize bounds them)
    # model
    arch: str = "fcn8s"
    backbone: str = "vgg16"
    geometry: str = "aligned"
    num_classes: int | None = None  # default: the dataset's
    pretrained_backbone: str | None = None
    init_from: str | None = None
    learnable_upsampling: bool = False
    global_context: bool = False  # ParseNet's image-level branch (see build_model)
    trainable: list | None = None  # module scopes to train (e.g. ["score_fr", "upscore", "backbone.fc7"]); rest frozen
    activation_checkpointing: bool = False  # recompute backbone stages in backward so larger batches fit
    step_in_backward: bool = False  # update each parameter as soon as its gradient is complete, then free it
    # loss
    ignore_index: int = 255
    class_weights: str | list | None = None  # a `data stats` JSON path (median-frequency weights) or a list
    loss_reduction: str = "mean"  # "sum" = the authors' unnormalised loss
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    bias_lr_mult: float = 1.0  # Caffe FCN: biases at 2x lr ...
    bias_decay: bool = True    # ... and without weight decay
    batch_size: int = 8
    accum_steps: int = 1
    max_iters: int = 1000
    time_budget: str | float | None = None  # "30m", "90s", "1.5h" or seconds: the run ends itself, evaluates, saves
    scheduler: str = "poly"  # poly | step | cosine | constant
    poly_power: float = 0.9
    step_size: int = 1000
    step_gamma: float = 0.1
    warmup_iters: int = 0
    # keep an exponential moving average of the weights (decay per iteration, e.g. 0.999; its horizon grows as about
    # the last 10% of the run, see optim.WeightEMA): validation, best.pt and last.pt use the average
    ema_decay: float | None = None
    # speed / numerics
    amp: str = "none"  # none | bf16 | fp16 | auto (bf16 where native and measured faster; the loss is always fp32)
    channels_last: bool | str = "auto"  # auto: the measured faster format for the device (inference.channels_last_preferred)
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    # bookkeeping
    val_every: int = 500
    val_max_images: int | None = None  # limit validation during training (final `evaluate` uses all)
    log_every: int = 10
    debug: bool = False
    out: str = "runs/train"
    resume: str | None = None  # None | "auto" | path to a checkpoint
    # multi-step recipes: each stage is a dict of overrides run in order, each starting from the previous weights;
    # a stage's "fraction" sets its max_iters to that share of the recipe's
    stages: list = field(default_factory=list)
    recipe: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# The authors' solver (voc-fcn*/solver.prototxt): SGD momentum 0.99, weight decay 5e-4, unnormalised (summed) loss,
# batch 1, fixed lr, biases at 2x lr with no decay; upsampling fixed; 16s from 32s, 8s from 16s.
_CAFFE = dict(data="voc-aug", val_data="seg11valid", val_split="val", optimizer="sgd", momentum=0.99,
              weight_decay=5e-4, loss_reduction="sum", batch_size=1, scheduler="constant", bias_lr_mult=2.0, bias_decay=False,
              geometry="caffe", backbone="vgg16", crop_size=None, scale_range=None, hflip=False,
              pretrained_backbone="imagenet", max_iters=100_000, val_every=4000, workers=4)

_CAMVID_DATA = dict(data="camvid", resize=[180, 240], crop_size=[180, 240], scale_range=[0.75, 1.5], color_jitter=0.2,
                    batch_size=8, max_iters=100_000, time_budget="30m", val_every=300, val_max_images=40,
                    amp="auto", eval_flip=True, eval_scales=[0.5, 0.75, 1, 1.25, 1.5, 1.75], workers=0)

RECIPES: dict[str, dict[str, Any]] = {
    # a small fast FCN on generated scenes: the one-command demo (a few minutes on 2 CPU cores)
    "demo": dict(data="synthetic", data_options={"length": 2000, "size": [128, 160]},
                 val_data_options={"length": 60}, arch="fcn8s", backbone="resnet18", optimizer="adamw", lr=2e-3,
                 weight_decay=1e-4, batch_size=8, crop_size=None, scale_range=[0.75, 1.25], max_iters=250,
                 scheduler="poly", warmup_iters=20, val_every=100, amp="none", workers=2),
    # FCN.tensorflow: VGG19 FCN-8s, Adam 1e-4, batch 2, ADE20K with 151 classes ("0 is a class"), 224-256 px
    "fcn-tensorflow": dict(data="ade20k", data_options={"zero_is_class": True}, arch="fcn8s", backbone="vgg19",
                           optimizer="adam", lr=1e-4, weight_decay=0.0, batch_size=2, resize=256, crop_size=224,
                           scale_range=None, scheduler="constant", max_iters=100_000, val_every=5000,
                           pretrained_backbone="imagenet"),
    # FCN-GoogLeNet: Inception-v3 FCN-8s; step 1 trains the new head only, step 2 everything
    "googlenet-two-step": dict(data="voc-aug", val_split="val", arch="fcn8s", backbone="inception_v3",
                               optimizer="adam", lr=1e-4, weight_decay=5e-4, batch_size=4, crop_size=320,
                               pretrained_backbone="imagenet", max_iters=40_000, val_every=2000, stages=[
                                   {"name": "step1-head", "trainable": ["head"], "fraction": 0.25},
                                   {"name": "step2-all", "trainable": None, "lr": 1e-5, "fraction": 0.75},
                               ]),
    "caffe-voc-fcn32s": dict(_CAFFE, arch="fcn32s", lr=1e-10),
    "caffe-voc-fcn16s": dict(_CAFFE, arch="fcn16s", lr=1e-12, pretrained_backbone=None),  # needs --init-from 32s
    "caffe-voc-fcn8s": dict(_CAFFE, arch="fcn8s", lr=1e-14, pretrained_backbone=None),  # needs --init-from 16s
    "caffe-voc-fcn8s-atonce": dict(_CAFFE, arch="fcn8s-atonce", lr=1e-10),
    # the paper's staged training in one command: 32s, then 16s from it, then 8s from that
    "staged": dict(stages=[{"name": "fcn32s", "arch": "fcn32s"}, {"name": "fcn16s", "arch": "fcn16s"},
                           {"name": "fcn8s", "arch": "fcn8s"}]),
    # The real-data recipes decode their training set once (cache_decoded: auto, at the fixed resize) and augment in
    # the main process: worker processes would take CPU from the two compute threads (CamVid s/iteration, 80-iteration
    # runs: 0.511 decoding each epoch with 2 workers, 0.427 cached with 2 workers, 0.402 cached with none).
    # real data, from scratch on a CPU (see RESULTS.md): half resolution (evaluated at full resolution), the square
    # root of SegNet's median-frequency class weights (the full weights over-predict thin classes: 10-minute runs,
    # full val mIoU 0.519 unweighted / 0.554 sqrt), AdamW with poly decay; evaluation averages flips and
    # scales 0.5-1.75 of the training resolution (session 9: +0.8 to +1.0 points over the earlier 1, 1.25, 1.5 on
    # each of four checkpoints, e.g. 0.6111 → 0.6213; 1, 1.25, 1.5 gained 1.5 points over single-scale).
    # FCN-4s (session 8, same seed and machine: val mIoU 0.5975 FCN-8s → 0.6061 FCN-4s at 3,600 iterations; pole IoU
    # 0.055 → 0.109) with progressive resizing (the first 60% at 120×160: 0.22 s steps instead of 0.36) and 4,400
    # iterations, 0.6111 in 22 minutes on a 2-core EPYC Zen 4 in bf16 (0.6213 at scales 0.5-1.75). Session 9: 5,000
    # iterations, 0.6269 in 25-26 minutes there, twice, bit-identical. While the iterations fit the 30-minute budget
    # at the pace so far, the poly schedule counts iterations, not the clock (engine.follows_clock), so a run with
    # the same seed repeats bit for bit; on slower machines the schedule follows the clock and the run stops at the
    # budget (three session-6 runs that filled the budget with FCN-8s: 5,153-5,776 iterations, 0.604-0.633)
    "camvid": dict(_CAMVID_DATA, arch="fcn4s", backbone="resnet18", optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                   class_weights=[0.5094, 0.4273, 2.1364, 0.3764, 0.9514, 0.6185, 3.1056, 1.3571, 0.8260, 2.4996,
                                  2.7132], scheduler="poly", warmup_iters=50, max_iters=5000,
                   size_schedule=[[0, 0.67], [0.6, 1]]),
    # the peer for RESULTS.md: torchvision's fcn_resnet50 from scratch with torchvision's reference recipe (SGD lr 0.02,
    # momentum 0.9, weight decay 1e-4, poly), on the camvid recipe's data, budget and evaluation
    "camvid-torchvision-baseline": dict(_CAMVID_DATA, arch="torchvision-fcn", backbone="resnet50", optimizer="sgd",
                                        lr=0.02, momentum=0.9, weight_decay=1e-4, scheduler="poly"),
    # fashion parsing from scratch: 256×168 (a third of CCP's 836×550 side; 8-minute runs: val pixel accuracy 0.843
    # at 256×168 with fixed crops vs 0.832 at 320×208 uncropped, 2.3× the iterations), no class weights (the target
    # is pixel accuracy), flip averaging at evaluation. Session 8: FCN-4s, amp auto and a 2,000-iteration cap
    # (22.5 minutes on a 2-core EPYC Zen 4 in bf16, 0.67 s each): pixel accuracy 0.8606, against 0.8586 for FCN-8s in
    # fp32 filling the budget on a Xeon (3,006 iterations; the val-40 curve is flat after ~1,600 either way).
    # Session 10: global_context (ParseNet's image-level scores; most errors are a garment given the wrong class):
    # 0.8624 in 21 minutes (foreground 0.4500, mIoU 0.1302); ResNet-34 with it filled the budget for 0.8629.
    # Session 12: batch 4 × 3,600 iterations instead of 8 × 2,000 (21 minutes): 0.8670 / 0.8691 (seeds 0 / 1) against
    # 0.8624 / 0.8635; on its own training images it scores 0.888 (batch 8: 0.893), so it generalises better, not fits more
    "ccp": dict(data="ccp", arch="fcn4s", backbone="resnet18", global_context=True, optimizer="adamw", lr=2e-3,
                weight_decay=1e-4, batch_size=4, resize=[256, 168], crop_size=[256, 168], scale_range=[0.75, 1.25], color_jitter=0.2,
                scheduler="poly", warmup_iters=50, max_iters=3600, time_budget="30m", val_every=400,
                val_max_images=40, amp="auto", eval_flip=True, workers=0),
}
NEEDS_INIT = {"caffe-voc-fcn16s": "an FCN-32s checkpoint", "caffe-voc-fcn8s": "an FCN-16s checkpoint"}


def parse_duration(value: str | float | int | None) -> float | None:
    """"30m" / "90s" / "1.5h" / 120 → seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value))
    if not m:
        raise UserError(f"cannot read time budget {value!r}; use e.g. 90s, 30m or 1.5h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _coerce(name: str, value: Any) -> Any:
    """Parse a ``--set key=value`` string with YAML rules (numbers, lists, null) and check the key exists."""
    if name not in FIELDS:
        raise UserError(f"unknown config key {name!r}; valid: {', '.join(sorted(FIELDS))}")
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    return _numeric(name, value)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _numeric(name: str, value: Any) -> Any:
    """Numbers for numeric keys: YAML 1.1 reads ``4e-3`` (no dot) as a string, so ``--set lr=4e-3`` and ``lr: 4e-3``
    would otherwise reach the trainer as text. A key that must be a number and is not is a user error."""
    kind = str(FIELDS[name].type).replace(" ", "")
    if kind not in ("float", "int", "float|None", "int|None"):
        return value
    if value is None and kind.endswith("None"):
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number, got {value!r}")
    if kind.startswith("int"):
        if value != int(value):
            raise UserError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def resolve_config(recipe: str | None = None, yaml_path: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """recipe → YAML file → overrides (flags win)."""
    values: dict[str, Any] = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise UserError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
        values.update(RECIPES[recipe])
        values["recipe"] = recipe
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path} must hold a mapping of config keys")
        for k, v in loaded.items():
            values[k] = _coerce(k, v)
    for k, v in (overrides or {}).items():
        values[k] = _coerce(k, v)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    choices = {"optimizer": ("sgd", "adam", "adamw"), "scheduler": ("poly", "step", "cosine", "constant"),
               "amp": ("none", "bf16", "fp16", "auto"), "loss_reduction": ("mean", "sum")}
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise UserError(f"unknown {key} {getattr(cfg, key)!r}; valid: {', '.join(valid)}")
    for key in ("batch_size", "accum_steps", "max_iters", "val_every", "log_every"):
        if int(getattr(cfg, key)) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    from .models import list_models
    for _, stage in stage_configs(cfg) if cfg.stages else [(None, cfg)]:
        name = f"{stage.arch}/{stage.backbone}" + ("/caffe" if stage.geometry == "caffe" else "")
        if name not in list_models():
            raise UserError(f"unknown model {name}; see `fcnseg models` (archs fcn32s, fcn16s, fcn8s, fcn8s-atonce, "
                            f"fcn4s; backbones vgg16, vgg19, inception_v3, resnet18/34/50/101, mobilenet_v3_large; "
                            f"geometry caffe only with VGG and the paper's archs)")
    if cfg.channels_last not in (True, False, "auto"):
        raise UserError(f"channels_last must be true, false or auto, got {cfg.channels_last!r}")
    if cfg.ema_decay is not None and not 0 < float(cfg.ema_decay) < 1:
        raise UserError(f"ema_decay must be in (0, 1) (e.g. 0.999), got {cfg.ema_decay}")
    if cfg.lr <= 0:
        raise UserError(f"lr must be > 0, got {cfg.lr}")
    from .baselines import BASELINE_ARCH
    if cfg.global_context and cfg.arch == BASELINE_ARCH:
        raise UserError(f"global_context is a branch of fcnseg's FCNs; {BASELINE_ARCH} (torchvision's model) has none")
    if cfg.resume not in (None, "auto") and not Path(cfg.resume).is_file():
        raise UserError(f"--resume: checkpoint not found: {cfg.resume} (use --resume auto to continue RUN_DIR)")
    parse_duration(cfg.time_budget)
    check_size_schedule(cfg.size_schedule)
    if cfg.recipe in NEEDS_INIT and not cfg.init_from and not cfg.resume:
        raise UserError(f"recipe {cfg.recipe} starts from {NEEDS_INIT[cfg.recipe]}: pass --init-from RUN/best.pt")


def check_size_schedule(schedule: list | None) -> None:
    if schedule is None:
        return
    try:
        points = [(float(p), float(s)) for p, s in schedule]
    except (TypeError, ValueError):
        points = None
    if (not points or points[0][0] != 0 or any(not 0 <= p < 1 or not 0 < s <= 4 for p, s in points)
            or any(a[0] >= b[0] for a, b in zip(points, points[1:]))):
        raise UserError(f"size_schedule must be [[progress, scale], ...] starting at progress 0, progress increasing "
                        f"within [0, 1), scale in (0, 4]; got {schedule!r}")


def stage_configs(cfg: TrainConfig) -> list[tuple[str | None, TrainConfig]]:
    """[(stage name or None, config)] — a multi-step recipe expands into one config per stage.

    The run's ``init_from`` starts the first stage only: each later stage starts from the one before it (the engine
    fills that in), unless the recipe's stage names its own. A ``time_budget`` is the whole run's, shared like the
    iterations: by each stage's ``fraction``, or equally."""
    if not cfg.stages:
        return [(None, cfg)]
    out = []
    budget = parse_duration(cfg.time_budget)
    for i, stage in enumerate(cfg.stages):
        stage = dict(stage)
        name = stage.pop("name", f"stage{i + 1}")
        fraction = stage.pop("fraction", None)
        if fraction is not None:  # a share of the recipe's max_iters, so --max-iters scales every stage
            stage["max_iters"] = max(1, round(float(fraction) * cfg.max_iters))
        share = float(fraction) if fraction is not None else 1.0 / len(cfg.stages)
        if budget is not None and "time_budget" not in stage:
            stage["time_budget"] = budget * share
        if i > 0:
            stage.setdefault("init_from", None)
        stage = {k: _coerce(k, v) for k, v in stage.items()}
        out.append((name, dataclasses.replace(cfg, stages=[], **stage)))
    return out
