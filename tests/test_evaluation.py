"""Evaluation: image-level tags restrict each image's prediction; restricted probabilities renormalise."""
from __future__ import annotations

import torch

from fcnseg.evaluation import evaluate, restrict_to_classes


class _FixedPredictor:
    """Returns preset class probabilities, whatever the image."""

    def __init__(self, probs):
        self.probs = probs

    def predict_image(self, image, **_):
        return self.probs[None].clone()


def test_given_tags_restrict_each_image_to_its_truth_classes():
    # 1×3 image, 3 classes; truth 0, 1, ignore. Pixel 1 prefers class 2, which the truth (the "tags") lacks.
    probs = torch.tensor([[0.6, 0.1, 0.3], [0.1, 0.4, 0.5], [0.2, 0.2, 0.6]]).T.reshape(3, 1, 3)
    data = [(torch.zeros(3, 1, 3), torch.tensor([[0, 1, 255]]))]
    free = evaluate(_FixedPredictor(probs), data, num_classes=3, progress=False)["hist"]
    tagged = evaluate(_FixedPredictor(probs), data, num_classes=3, progress=False, given_tags=True)["hist"]
    assert free.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert tagged.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_restrict_to_classes_renormalises_and_never_picks_a_dropped_class():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0]).view(1, 4, 1, 1)
    out = restrict_to_classes(probs, torch.tensor([1, 2]))
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.6, 0.4, 0.0]))
    # the only allowed class has probability 0 (underflow): it still wins
    assert restrict_to_classes(probs, torch.tensor([3])).argmax(1).item() == 3
    half = restrict_to_classes(probs.to(torch.bfloat16), torch.tensor([3]))
    assert half.argmax(1).item() == 3 and half.dtype == torch.bfloat16
