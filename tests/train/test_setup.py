"""Setup: the decoded-sample cache."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from fcnseg.data import get_dataset
from fcnseg.data.base import DecodedCache
from fcnseg.data.transforms import build_transforms
from fcnseg.errors import UserError
from fcnseg.train.setup import cache_decoded


def test_decoded_cache_holds_prepared_samples_and_returns_int64_masks(tiny):
    ds = get_dataset("synthetic", None, "train", None, length=4, size=[48, 64])
    cache = DecodedCache(ds, prepare=build_transforms(False, resize=[24, 32])).fill()
    assert cache.num_classes == ds.num_classes and len(cache) == 4
    image, mask = cache[1]
    assert image.shape == (3, 24, 32) and mask.shape == (24, 32) and mask.dtype == torch.int64
    assert cache.masks[1].dtype == torch.uint8
    ref_image, ref_mask = ds.load(1)
    ref_image, ref_mask = build_transforms(False, resize=[24, 32])(tv_tensors.Image(ref_image), tv_tensors.Mask(ref_mask))
    assert torch.equal(image, ref_image) and torch.equal(mask, ref_mask)
    with pytest.raises(UserError, match="cache_decoded"):
        cache_decoded(tiny_cfg := tiny(cache_decoded="sometimes"), 4)
    assert tiny_cfg.cache_decoded == "sometimes"
