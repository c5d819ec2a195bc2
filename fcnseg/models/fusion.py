"""Inputs beyond RGB (FCN paper, section 5, NYUDv2): early fusion widens the first convolution to take the extra
channels; late fusion runs one FCN per input stream and averages their scores.

The authors' nets (fcn.berkeleyvision.org): ``nyud-fcn32s-color-d`` concatenates RGB and depth into a 4-channel
``conv1_1_bgrd`` whose depth filter starts as the mean of the RGB filters (its solve.py); ``nyud-fcn32s-color-hha``
sums ``score_frcolor`` and ``score_frhha`` with coefficients 0.5 each before the shared upsampling. Upsampling is
linear and fixed, so averaging each stream's upsampled logits computes the same scores, and lets the streams be any
FCN (16s, 8s) as built alone.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def widen_input(model: nn.Module, in_channels: int) -> nn.Module:
    """Give ``model``'s first convolution ``in_channels`` inputs, in place: the RGB filters stay on the first three
    channels and every other channel gets the mean of the RGB filters (the authors' early-fusion initialisation);
    with fewer than three channels each gets that mean."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)  # the stem
    w = conv.weight
    mean = w.mean(1, keepdim=True)
    keep = w.shape[1] if in_channels >= w.shape[1] else 0
    new = torch.cat([w[:, :keep], mean.expand(-1, in_channels - keep, -1, -1)], 1)
    conv.weight = nn.Parameter(new.contiguous(), requires_grad=w.requires_grad)
    conv.in_channels = in_channels
    model.in_channels = in_channels
    return model


class LateFusion(nn.Module):
    """Several FCNs, each on its own consecutive channels of the input (``streams[k].in_channels`` each), whose
    logits are averaged: the paper's RGB-HHA net. Attributes that describe the model (``arch``, ``backbone_name``,
    ``num_classes``, ``geometry``, ``grid``, …) are the first stream's; so is ``normalization`` (RGB) until one for
    all the input's channels is set."""

    def __init__(self, streams: list[nn.Module]):
        super().__init__()
        if len(streams) < 2:
            raise ValueError(f"late fusion needs two or more streams, got {len(streams)}")
        self.streams = nn.ModuleList(streams)
        first = streams[0]
        self.arch, self.backbone_name, self.num_classes = first.arch, first.backbone_name, first.num_classes
        self.geometry, self.global_context = first.geometry, getattr(first, "global_context", False)
        for name in ("grid", "heads"):
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))
        self.in_channels = sum(getattr(s, "in_channels", 3) for s in streams)
        self.normalization = first.normalization  # training sets the data's: dataset.input_normalization

    @property
    def learnable_upsampling(self) -> bool:
        return self.streams[0].learnable_upsampling

    def set_learnable_upsampling(self, learnable: bool) -> None:
        for s in self.streams:
            s.set_learnable_upsampling(learnable)

    def score_layers(self) -> list[str]:
        return [f"streams.{k}.{n}" for k, s in enumerate(self.streams) for n in s.score_layers()]

    def upsample_layers(self) -> list[str]:
        return [f"streams.{k}.{n}" for k, s in enumerate(self.streams) for n in s.upsample_layers()]

    def reset_head(self) -> None:
        for s in self.streams:
            s.reset_head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [getattr(s, "in_channels", 3) for s in self.streams]
        out = None
        for stream, part in zip(self.streams, x.split(sizes, dim=1)):
            logits = stream(part)
            out = logits if out is None else out + logits
        return out / len(self.streams)
