"""Named training recipes: overrides of :class:`~fcnseg.train.config.TrainConfig`, one line of why each.

The measurements behind the choices are in docs/recipes.md and RESULTS.md.
"""
from __future__ import annotations

from typing import Any

# The authors' solver (voc-fcn*/solver.prototxt): SGD momentum 0.99, weight decay 5e-4, unnormalised (summed) loss,
# batch 1, fixed lr, biases at 2x lr with no decay; upsampling fixed; 16s from 32s, 8s from 16s.
_CAFFE = dict(data="voc-aug", val_data="seg11valid", val_split="val", optimizer="sgd", momentum=0.99,
              weight_decay=5e-4, loss_reduction="sum", batch_size=1, scheduler="constant", bias_lr_mult=2.0,
              bias_decay=False, geometry="caffe", backbone="vgg16", crop_size=None, scale_range=None, hflip=False,
              pretrained_backbone="imagenet", max_iters=100_000, val_every=4000, workers=4)

# CamVid from scratch on a CPU at half resolution, decoded once and augmented in the main process (workers=0: loader
# processes took CPU from the two compute threads), evaluated with flips and scales 0.5-1.75 at full resolution
_CAMVID_DATA = dict(data="camvid", resize=[180, 240], crop_size=[180, 240], scale_range=[0.75, 1.5], color_jitter=0.2,
                    batch_size=8, max_iters=100_000, time_budget="30m", val_every=300, val_max_images=40,
                    amp="auto", eval_flip=True, eval_scales=[0.5, 0.75, 1, 1.25, 1.5, 1.75], workers=0)

# FCN.tensorflow's model and solver (its FCN.py): VGG19 FCN-8s from ImageNet weights, Adam 1e-4, batch 2; resize 256
# then crop 224 (its reader squashes each image to 224×224: docs/training.md says how to do that instead)
_FCN_TENSORFLOW = dict(arch="fcn8s", backbone="vgg19", optimizer="adam", lr=1e-4, weight_decay=0.0, batch_size=2,
                       resize=256, crop_size=224, scale_range=None, scheduler="constant", max_iters=100_000,
                       val_every=5000, pretrained_backbone="imagenet")

RECIPES: dict[str, dict[str, Any]] = {
    # the one-command demo: a small fast FCN on generated scenes, a few minutes on 2 CPU cores
    "demo": dict(data="synthetic", data_options={"length": 2000, "size": [128, 160]},
                 val_data_options={"length": 60}, arch="fcn8s", backbone="resnet18", optimizer="adamw", lr=2e-3,
                 weight_decay=1e-4, batch_size=8, crop_size=None, scale_range=[0.75, 1.25], max_iters=250,
                 scheduler="poly", warmup_iters=20, val_every=100, amp="none", workers=2),
    # FCN.tensorflow's setup: VGG19 FCN-8s, Adam 1e-4, batch 2, ADE20K with 151 classes ("0 is a class"), 224-256 px
    "fcn-tensorflow": dict(data="ade20k", data_options={"zero_is_class": True}, **_FCN_TENSORFLOW),
    # the fashion-parsing seed: FCN.tensorflow's setup unchanged, on clothing (CCP, 59 labels) instead of ADE20K
    "fashion": dict(data="ccp", **_FCN_TENSORFLOW),
    # FCN-GoogLeNet's two steps on Inception-v3: the new head alone, then everything at a tenth of the lr
    "googlenet-two-step": dict(data="voc-aug", val_split="val", arch="fcn8s", backbone="inception_v3",
                               optimizer="adam", lr=1e-4, weight_decay=5e-4, batch_size=4, crop_size=320,
                               pretrained_backbone="imagenet", max_iters=40_000, val_every=2000, stages=[
                                   {"name": "step1-head", "trainable": ["head"], "fraction": 0.25},
                                   {"name": "step2-all", "trainable": None, "lr": 1e-5, "fraction": 0.75},
                               ]),
    "caffe-voc-fcn32s": dict(_CAFFE, arch="fcn32s", lr=1e-10),  # the authors' voc-fcn32s solver
    "caffe-voc-fcn16s": dict(_CAFFE, arch="fcn16s", lr=1e-12, pretrained_backbone=None),  # voc-fcn16s, from a 32s run
    "caffe-voc-fcn8s": dict(_CAFFE, arch="fcn8s", lr=1e-14, pretrained_backbone=None),  # voc-fcn8s, from a 16s run
    "caffe-voc-fcn8s-atonce": dict(_CAFFE, arch="fcn8s-atonce", lr=1e-10),  # voc-fcn8s-atonce: all streams at once
    # the paper's staged training in one command: 32s, then 16s from it, then 8s from that
    "staged": dict(stages=[{"name": "fcn32s", "arch": "fcn32s"}, {"name": "fcn16s", "arch": "fcn16s"},
                           {"name": "fcn8s", "arch": "fcn8s"}]),
    # CamVid from scratch in 30 CPU minutes: the best setup measured (docs/recipes.md; RESULTS.md, CamVid)
    "camvid": dict(_CAMVID_DATA, arch="fcn4s", backbone="resnet18", optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                   class_weights=[0.5094, 0.4273, 2.1364, 0.3764, 0.9514, 0.6185, 3.1056, 1.3571, 0.8260, 2.4996,
                                  2.7132], scheduler="poly", warmup_iters=50, max_iters=5000,
                   size_schedule=[[0, 0.67], [0.6, 1]]),
    # the peer for RESULTS.md: torchvision's fcn_resnet50 with torchvision's reference recipe, on camvid's data
    "camvid-torchvision-baseline": dict(_CAMVID_DATA, arch="torchvision-fcn", backbone="resnet50", optimizer="sgd",
                                        lr=0.02, momentum=0.9, weight_decay=1e-4, scheduler="poly"),
    # CCP fashion parsing from scratch in 30 CPU minutes, for pixel accuracy (docs/recipes.md; RESULTS.md, CCP)
    "ccp": dict(data="ccp", arch="fcn4s", backbone="resnet18", global_context=True, optimizer="adamw", lr=2e-3,
                weight_decay=1e-4, batch_size=4, resize=[256, 168], crop_size=[256, 168], scale_range=[0.75, 1.25],
                color_jitter=0.2, scheduler="poly", warmup_iters=50, max_iters=3600, time_budget="30m",
                val_every=400, val_max_images=40, amp="auto", eval_flip=True, workers=0),
}
# recipes that continue another run: what their --init-from must be
NEEDS_INIT = {"caffe-voc-fcn16s": "an FCN-32s checkpoint", "caffe-voc-fcn8s": "an FCN-16s checkpoint"}
