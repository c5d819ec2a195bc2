"""Joint transforms keep image and mask aligned and never invent labels."""
from __future__ import annotations

import torch
from torchvision import tv_tensors

from fcnseg.data import get_dataset
from fcnseg.data.transforms import build_transforms, pad_collate


def test_image_and_mask_stay_aligned_and_masks_gain_no_values():
    # a mask whose labels are written into the image: pixel value = 40 * label + 20 in every channel
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (12, 15)).repeat_interleave(6, 0).repeat_interleave(6, 1)  # 72×90 blocks
    image = tv_tensors.Image((labels * 40 + 20).to(torch.uint8).expand(3, -1, -1).clone())
    mask = tv_tensors.Mask(labels)
    tf = build_transforms(True, crop_size=64, scale_range=(0.5, 2.0), hflip=True, color_jitter=0.0)
    seen_pad = False
    for seed in range(30):
        torch.manual_seed(seed)
        img, m = tf(image, mask)
        assert img.shape[-2:] == m.shape[-2:] == (64, 64)
        assert set(m.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
        valid = m != 255
        seen_pad |= bool((~valid).any())
        derived = ((img[0].int() - 20 + 20) // 40)  # nearest label encoded in the image
        # away from block edges (where bilinear image resizing blends), image and mask agree exactly
        edge = torch.zeros_like(valid)
        d = m.clone()
        edge[1:, :] |= d[1:, :] != d[:-1, :]
        edge[:-1, :] |= d[1:, :] != d[:-1, :]
        edge[:, 1:] |= d[:, 1:] != d[:, :-1]
        edge[:, :-1] |= d[:, 1:] != d[:, :-1]
        inner = valid & ~edge
        assert inner.sum() > 100
        agree = (derived[inner] == m[inner]).float().mean()
        assert agree > 0.98, (seed, agree)
        assert (img[:, ~valid] == 0).all()  # padding: image 0, mask ignore
    assert seen_pad


def test_pad_collate_pads_image_with_zero_and_mask_with_ignore():
    a = (torch.full((3, 4, 5), 7, dtype=torch.uint8), torch.zeros(4, 5, dtype=torch.int64))
    b = (torch.full((3, 6, 3), 9, dtype=torch.uint8), torch.ones(6, 3, dtype=torch.int64))
    images, masks = pad_collate([a, b])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert (images[0, :, 4:] == 0).all() and (masks[0, 4:] == 255).all() and (masks[1, :, 3:] == 255).all()
    assert (masks[1, :, :3] == 1).all()


def test_synthetic_is_deterministic_and_has_all_classes():
    ds = get_dataset("synthetic", None, "train", length=20, size=(64, 80), seed=3)
    a, b = ds[5], ds[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.uint8 and a[1].dtype == torch.int64 and a[0].shape == (3, 64, 80)
    other = get_dataset("synthetic", None, "val", length=20, size=(64, 80), seed=3)[5]
    assert not torch.equal(a[0], other[0])
    present = set()
    for i in range(20):
        present |= set(ds[i][1].unique().tolist())
    assert present == set(range(7)) and len(ds.classes) == 7
