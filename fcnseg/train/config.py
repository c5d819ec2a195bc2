"""Training configuration: one dataclass whose fields carry their own help, and the resolution recipe → YAML →
flags (flags win), with validation. ``fcnseg train`` makes its flags from the fields' metadata."""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..models import list_models
from ..models.baselines import BASELINE_ARCH
from .recipes import NEEDS_INIT, RECIPES

log = logging.getLogger("fcnseg")
# a recipe's reader settings, which belong to the recipe's own dataset (see own_data_only)
RECIPE_DATA_KEYS = ("data_options", "val_data", "val_data_options")


def option(default: Any = dataclasses.MISSING, *, help: str, flag: type | str | None = None,  # noqa: A002
           factory: Any = dataclasses.MISSING) -> Any:
    """A config field and its help text. ``flag`` says how ``fcnseg train`` takes it: a type (``--name VALUE``),
    ``"switch"`` (``--name`` sets it true), ``"negatable"`` (``--name`` / ``--no-name``), ``"list"`` (comma-separated
    values); ``None``: through ``--set name=value`` or a YAML file only."""
    return field(default=default, default_factory=factory, metadata={"help": help, "flag": flag})


@dataclass
class TrainConfig:
    # data
    data: str = option("synthetic", help="dataset name (see `fcnseg data --help`)", flag=str)
    root: str | None = option(None, help="dataset folder", flag=str)
    train_split: str = option("train", help="split to train on")
    val_split: str = option("val", help="split to validate on")
    val_data: str | None = option(None, help="validate on another reader (the paper's seg11valid); default: data")
    data_options: dict = option(help="reader options (e.g. length and size for synthetic)", factory=dict)
    val_data_options: dict = option(help="overrides of data_options for validation (e.g. length)", factory=dict)
    crop_size: int | list | None = option(None, help="random crop size (px)", flag=int)
    resize: int | list | None = option(None, help="fixed resize before augmentation (FCN.tensorflow's 224-256 px)")
    scale_range: list | None = option(help="random scale range", factory=lambda: [0.5, 2.0])
    hflip: bool = option(True, help="random horizontal flips")
    color_jitter: float = option(0.0, help="brightness / contrast / saturation jitter")
    size_schedule: list | None = option(None, help=(
        "progressive resizing: [[progress, scale], ...] — from that share of the run (iterations or time budget, as "
        "the lr schedule counts it) each augmented batch is resized by scale (images bilinear, masks nearest), e.g. "
        "[[0, 0.67], [0.6, 1]] trains the first 60% at two thirds of the crop size: cheaper steps, more of them"))
    eval_flip: bool = option(False, help=(
        "test-time flips that `fcnseg evaluate` / `predict` default to for this run's checkpoints (flags override); "
        "in-training validation stays single-scale and unflipped"))
    eval_scales: list | None = option(None, help="test-time scales `evaluate` / `predict` default to (as eval_flip)")
    workers: int = option(2, help="DataLoader worker processes", flag=int)
    cache_decoded: str | bool = option("auto", help=(
        "decode training samples once into RAM (auto: when a fixed resize bounds them)"))
    # model
    arch: str = option("fcn8s", help="fcn32s | fcn16s | fcn8s | fcn8s-atonce | fcn4s", flag=str)
    backbone: str = option("vgg16", help="vgg16 | vgg19 | inception_v3 | resnet18/34/50/101 | mobilenet_v3_large",
                           flag=str)
    geometry: str = option("aligned", help="aligned (default) | caffe (VGG only)", flag=str)
    num_classes: int | None = option(None, help="number of classes (default: the dataset's)", flag=int)
    pretrained_backbone: str | None = option(None, help="imagenet, or a weight file", flag=str)
    init_from: str | None = option(None, help="start from these weights (any format fcnseg reads)", flag=str)
    learnable_upsampling: bool = option(False, help="learn the upsampling (default: fixed bilinear, as the paper)")
    global_context: bool = option(False, help="ParseNet's image-level branch (see build_model)")
    trainable: list | None = option(None, help=(
        "comma-separated module scopes to train, the rest frozen (e.g. head,backbone.fc7)"), flag="list")
    activation_checkpointing: bool = option(False, help=(
        "recompute backbone stages during backward: less memory, more time"), flag="switch")
    step_in_backward: bool = option(False, help=(
        "update each parameter inside backward and free its gradient: less peak memory, same update"), flag="switch")
    # loss
    ignore_index: int = option(255, help="label ignored by loss and metrics (255)", flag=int)
    class_weights: str | list | None = option(None, help=(
        "JSON written by `fcnseg data stats` (median-frequency weights), or a list"), flag=str)
    loss_reduction: str = option("mean", help='mean | sum ("sum" = the authors\' unnormalised loss)')
    # optimisation
    optimizer: str = option("sgd", help="sgd | adam | adamw", flag=str)
    lr: float = option(0.01, help="base learning rate", flag=float)
    momentum: float = option(0.9, help="SGD momentum")
    weight_decay: float = option(1e-4, help="weight decay", flag=float)
    betas: list = option(help="Adam / AdamW betas", factory=lambda: [0.9, 0.999])
    bias_lr_mult: float = option(1.0, help="lr multiplier of biases (Caffe FCN: 2)")
    bias_decay: bool = option(True, help="weight decay on biases (Caffe FCN: none)")
    batch_size: int = option(8, help="images per process per step", flag=int)
    accum_steps: int = option(1, help="gradient accumulation steps", flag=int)
    max_iters: int = option(1000, help="iterations (optimizer steps)", flag=int)
    time_budget: str | float | None = option(None, help=(
        "stop after this long, evaluate and save (e.g. 30m, 90s, 1.5h)"), flag=str)
    scheduler: str = option("poly", help="poly | step | cosine | constant", flag=str)
    poly_power: float = option(0.9, help="exponent of the poly schedule")
    step_size: int = option(1000, help="iterations between decays of the step schedule")
    step_gamma: float = option(0.1, help="factor of each decay of the step schedule")
    warmup_iters: int = option(0, help="linear warm-up iterations", flag=int)
    ema_decay: float | None = option(None, help=(
        "validate and save an exponential moving average of the weights (e.g. 0.999; its horizon grows as about the "
        "last 10% of the run, see optim.WeightEMA)"), flag=float)
    # speed / numerics
    amp: str = option("none", help=(
        "none | bf16 | fp16 | auto (bf16 where native and measured faster) autocast (loss always fp32)"), flag=str)
    channels_last: bool | str = option("auto", help=(
        "channels_last memory format (default auto: the measured faster format for the device)"), flag="negatable")
    device: str = option("auto", help="auto | cpu | cuda | cuda:N", flag=str)
    seed: int = option(0, help="random seed", flag=int)
    deterministic: bool = option(False, help="deterministic algorithms", flag="switch")
    # bookkeeping
    val_every: int = option(500, help="validate and checkpoint every N iterations", flag=int)
    val_max_images: int | None = option(None, help="limit validation during training (final `evaluate` uses all)")
    log_every: int = option(10, help="log the loss every N iterations")
    debug: bool = option(False, help="histograms of activations/gradients/weights and per-layer gradient norms",
                         flag="switch")
    out: str = option("runs/train", help="run folder (config.yaml, last.pt, best.pt, log.jsonl, tb/)", flag=str)
    resume: str | None = option(None, help="auto (continue RUN_DIR/last.pt) or a checkpoint path", flag=str)
    stages: list = option(help=(
        "multi-step recipes: each stage is a dict of overrides run in order, each starting from the previous "
        "weights; a stage's fraction sets its max_iters to that share of the recipe's"), factory=list)
    recipe: str | None = option(None, help="the recipe this config started from")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


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
    kind = str(FIELDS[name].type).replace(" ", "")
    if isinstance(value, str) and value.lower() == "none" and "str" in kind and kind.endswith("|None"):
        return None  # `--pretrained-backbone none`: unset, as YAML's null
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
    given: dict[str, Any] = {}  # what the YAML file and the overrides set
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
            given[k] = _coerce(k, v)
    for k, v in (overrides or {}).items():
        given[k] = _coerce(k, v)
    values.update(given)
    if recipe is not None:
        own_data_only(values, recipe, given)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def own_data_only(values: dict[str, Any], recipe: str, given: dict[str, Any]) -> None:
    """Drop the recipe's reader settings (RECIPE_DATA_KEYS) from ``values`` when ``given`` picks another dataset:
    they are options of the recipe's reader (fcn-tensorflow's ``zero_is_class`` is ADE20K's, and the CCP reader
    refuses it). Settings that ``given`` sets itself stay."""
    own = RECIPES[recipe].get("data")
    if given.get("data") in (None, own):
        return
    dropped = [k for k in RECIPE_DATA_KEYS if k in RECIPES[recipe] and k not in given]
    for k in dropped:
        del values[k]
    if dropped:
        log.info("recipe %s: its %s are for %s, not %s: left out", recipe, ", ".join(dropped), own, given["data"])


def validate(cfg: TrainConfig) -> None:
    choices = {"optimizer": ("sgd", "adam", "adamw"), "scheduler": ("poly", "step", "cosine", "constant"),
               "amp": ("none", "bf16", "fp16", "auto"), "loss_reduction": ("mean", "sum")}
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise UserError(f"unknown {key} {getattr(cfg, key)!r}; valid: {', '.join(valid)}")
    for key in ("batch_size", "accum_steps", "max_iters", "val_every", "log_every"):
        if int(getattr(cfg, key)) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
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

    The run's ``init_from`` starts the first stage only: each later stage starts from the one before it (the loop
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
