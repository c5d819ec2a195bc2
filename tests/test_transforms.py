"""Joint transforms keep image and mask aligned and never invent labels."""
from __future__ import annotations

import torch
from torchvision import tv_tensors

from fcnseg.data import get_dataset
from fcnseg.data.transforms import build_transforms, class_mix, pad_collate


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


def _outfits(n=4, size=(12, 10)):
    """A batch of n 'outfits': background 0, a few garment classes in bands, crop padding (255) at the right; every
    image pixel carries its sample number and label, so pasted pixels can be traced to where they came from."""
    masks = torch.zeros(n, *size, dtype=torch.int64)
    for i in range(n):
        for band, label in enumerate(range(1 + 3 * i, 4 + 3 * i + (i % 2))):  # 3 or 4 garments per sample
            masks[i, 2 + 2 * band: 4 + 2 * band, 2:8] = label
    masks[1, :, 8:] = 255
    if n > 3:
        masks[3] = 0  # a sample with nothing but background
    images = (masks * 10 + torch.arange(n).view(n, 1, 1)).to(torch.float32)[:, None].expand(n, 3, *size).clone()
    return images, masks


def test_class_mix_pastes_half_the_classes_of_the_next_sample_at_the_same_place():
    images, masks = _outfits()
    before = images.clone(), masks.clone()
    g = torch.Generator().manual_seed(0)
    out_images, out_masks = class_mix(images, masks, 1.0, keep=0, generator=g)
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])  # inputs untouched
    n = masks.shape[0]
    for i in range(n):
        src = masks[(i + 1) % n]
        garments = set(src.unique().tolist()) - {0, 255}
        pasted = out_masks[i] != masks[i]
        got = set(out_masks[i][pasted].unique().tolist())
        # exactly ceil(half) of the next sample's garments, never its background or padding, each one whole
        assert got <= garments and len(got) == (len(garments) + 1) // 2
        assert torch.equal(pasted, torch.isin(src, torch.tensor(sorted(got))) & (src != masks[i]))
        assert torch.equal(out_masks[i][pasted], src[pasted])
        # the image follows the mask: pasted pixels are the source sample's, the rest the sample's own
        assert torch.equal(out_images[i][:, pasted], images[(i + 1) % n][:, pasted])
        assert torch.equal(out_images[i][:, ~pasted], images[i][:, ~pasted])
    assert torch.equal(out_masks[2], masks[2]) and torch.equal(out_images[2], images[2])  # sample 3 is all background
    # without a background class, background is a class like any other
    _, m = class_mix(images, masks, 1.0, keep=None, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(m[2], masks[2])


def test_class_mix_rate_and_no_op():
    images, masks = _outfits(n=2)
    same = class_mix(images, masks, 0.0)
    assert same[0] is images and same[1] is masks
    one = images[:1], masks[:1]
    same = class_mix(*one, 1.0)  # a batch of one has no partner
    assert same[0] is one[0] and same[1] is one[1]
    g = torch.Generator().manual_seed(1)
    changed = sum(not torch.equal(class_mix(images, masks, 0.3, keep=0, generator=g)[1][0], masks[0])
                  for _ in range(1000))
    assert 250 < changed < 350  # sample 0 gets classes pasted in about 30% of batches
