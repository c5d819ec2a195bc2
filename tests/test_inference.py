"""Predictor.predict_image: multi-scale averaging stays aligned, tiny images and bad options."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fcnseg.inference import Predictor
from fcnseg.normalization import IMAGENET


class _PassThrough(nn.Module):
    """Two-class logits: the input's first channel, and 0 — so the class-0 probability is sigmoid(input)."""
    num_classes = 2
    normalization = IMAGENET

    def forward(self, x):
        return torch.cat([x[:, :1], torch.zeros_like(x[:, :1])], 1)


def _ramp(h, w):  # value = row: exactly linear (h ≤ 256)
    return torch.arange(h, dtype=torch.uint8)[:, None].expand(1, 3, h, w)


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.75])
def test_multi_scale_passes_come_back_aligned(scale):
    """A linear ramp down- and up-sampled bilinearly comes back unchanged inside the image, if the way back maps
    pixels as the way there did (with a scale factor there and a size ratio back, 333 rows ended up to 0.98 px
    apart at the bottom)."""
    predictor = Predictor(_PassThrough(), "cpu", amp="none", channels_last=False)
    image = _ramp(251, 20)  # 125.5, 188.25 and 439.25 rows at these scales: rounded sizes, ratios ≠ scale
    ref = predictor.predict_image(image)[0, 0]
    probs = predictor.predict_image(image, scales=(scale,))[0, 0]
    assert probs.shape == ref.shape == (251, 20)
    assert torch.allclose(probs[8:-8, 8:-8], ref[8:-8, 8:-8], atol=1e-5)


def test_images_smaller_than_a_scale_can_shrink_still_predict():
    predictor = Predictor(_PassThrough(), "cpu", amp="none", channels_last=False)
    probs = predictor.predict_image(torch.full((1, 3, 1, 1), 7, dtype=torch.uint8), scales=(0.5, 1.0), flip=True)
    assert probs.shape == (1, 2, 1, 1) and torch.allclose(probs.sum(1), torch.ones(()))


@pytest.mark.parametrize("options", [{"scales": (0.0, 1.0)}, {"scales": (float("nan"),)}, {"window": -5},
                                     {"window": 8, "overlap": -0.5}])
def test_impossible_options_are_refused(options):
    predictor = Predictor(_PassThrough(), "cpu", amp="none", channels_last=False)
    with pytest.raises(ValueError):
        predictor.predict_image(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), **options)


class _Recorder(_PassThrough):
    def forward(self, x):
        self.seen = tuple(x.shape[-2:])
        return super().forward(x)


@pytest.mark.parametrize("size", [(300, 400), (400, 300), (333, 333), (241, 500)])
def test_a_single_number_resize_keeps_the_aspect_ratio_as_training_does(size):
    """Training's v2.Resize(256) sets the shorter side; inference and serving squashed the image to 256×256."""
    from torchvision.transforms import v2

    from fcnseg.inference import resized_size
    trained = tuple(v2.Resize(256)(torch.zeros(3, *size, dtype=torch.uint8)).shape[-2:])
    assert resized_size(*size, 256) == resized_size(*size, [256]) == trained
    assert resized_size(*size, [180, 240]) == (180, 240)
    model = _Recorder()
    probs = Predictor(model, "cpu", amp="none", channels_last=False).predict_image(
        torch.zeros(1, 3, *size, dtype=torch.uint8), input_size=256)
    assert model.seen == trained and probs.shape[-2:] == size
