"""The one image decoder: EXIF orientation against the EXIF specification's own definitions, the pixel limit read
from the header (a bomb is refused without decoding it), and the file kinds found in the wild."""
from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data.io import ImageTooLarge, UnreadableImage, exif_orientation, read_image, read_index_mask, \
    set_max_pixels
from fcnseg.errors import UserError

H, W = 40, 60




@pytest.fixture(autouse=True)
def default_limit():
    yield
    set_max_pixels(None)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_photo(orientation, tmp_path, photos):
    stored = photos.photo()
    path = photos.with_orientation(tmp_path / f"o{orientation}.png", stored, orientation)
    assert exif_orientation(path) == orientation
    want = photos.displayed(stored, orientation)
    got = read_image(path)
    assert got.shape == (3, *want.shape[:2])
    assert np.array_equal(got.permute(1, 2, 0).numpy(), want)
    # datasets read the stored pixels: their masks label those
    assert np.array_equal(read_image(path, exif=False).permute(1, 2, 0).numpy(), stored)


def test_a_rotated_phone_jpeg_comes_out_upright(tmp_path, photos):
    path = photos.with_orientation(tmp_path / "phone.jpg", photos.photo(), 6, quality=95)  # stored 60×40, shown 40×60
    image = read_image(path)
    assert tuple(image.shape) == (3, W, H)
    assert tuple(read_image(path, exif=False).shape) == (3, H, W)


def test_masks_are_never_rotated(tmp_path, photos):
    mask = (np.arange(H * W).reshape(H, W) % 7).astype(np.uint8)
    path = photos.with_orientation(tmp_path / "mask.png", mask, 6)
    assert np.array_equal(read_index_mask(path), mask)


def test_a_bomb_is_refused_from_its_header_without_decoding(tmp_path, photos):
    bomb = photos.png_bomb(tmp_path / "bomb.png", 12_000)  # 144 MP > the 100 MP default
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    with pytest.raises(ImageTooLarge) as e:
        read_image(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # the decoded image would be 144 MB of grayscale (432 MB as RGB)
    msg = str(e.value)
    assert "\n" not in msg and str(bomb) in msg and "12000×12000" in msg and "100,000,000" in msg
    assert "--max-pixels 144000000" in msg
    with pytest.raises(ImageTooLarge):
        read_index_mask(bomb)  # masks too


def test_the_limit_can_be_raised_or_lowered(tmp_path, photos):
    path = tmp_path / "p.png"
    Image.fromarray(photos.photo()).save(path)
    with pytest.raises(ImageTooLarge, match="2,400"):
        read_image(path, max_pixels=H * W - 1)
    assert read_image(path, max_pixels=H * W).shape == (3, H, W)
    set_max_pixels(100)
    with pytest.raises(ImageTooLarge):
        read_image(path)
    set_max_pixels(0)  # no limit
    assert read_image(path).shape == (3, H, W)
    with pytest.raises(UserError, match="--max-pixels"):
        set_max_pixels(-1)


def test_16_bit_png_scales_by_257(tmp_path):
    deep = (np.arange(H * W).reshape(H, W) * 27).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = read_image(tmp_path / "deep.png")
    want = torch.from_numpy((deep / 257.0).round().astype(np.uint8))
    assert all(torch.equal(c, want) for c in image)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :20] = (200, 30, 30)
    rgb[:, 40:] = (20, 40, 220)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = read_image(tmp_path / "cmyk.jpg").permute(1, 2, 0).int().numpy()
    # a naive CMYK → RGB would invert or darken the colours; Pillow's conversion keeps them within JPEG's error
    assert np.abs(image[:, 2:18] - (200, 30, 30)).max() < 12 and np.abs(image[:, 42:] - (20, 40, 220)).max() < 12


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, : W // 2, 3] = 0        # fully transparent: shown as the page behind it (white)
    rgba[:, W // 2:, 3] = 255       # opaque
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png").permute(1, 2, 0).numpy()
    assert (image[:, : W // 2] == 255).all() and (image[:, W // 2:] == (10, 200, 30)).all()
    half = rgba.copy()
    half[..., 3] = 128
    Image.fromarray(half).save(tmp_path / "half.png")
    blended = read_image(tmp_path / "half.png").permute(1, 2, 0).int().numpy()
    want = np.round(np.array([10, 200, 30]) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(blended - want).max() <= 1


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_animations_and_multipage_files_give_their_first_frame_and_say_so(fmt, tmp_path, caplog):
    frames = [Image.fromarray(np.full((H, W, 3), v, np.uint8)) for v in (0, 255, 128)]
    path = tmp_path / f"many.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 3
    with caplog.at_level(logging.WARNING, logger="fcnseg"):
        image = read_image(path)
    assert tuple(image.shape) == (3, H, W) and int(image.max()) == 0
    assert f"{path} has 3 frames; using the first" in caplog.text


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_and_junk_files_are_one_line_errors(suffix, tmp_path, photos):
    good = tmp_path / f"good{suffix}"
    Image.fromarray(photos.photo()).save(good)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"not an image")
    for bad in (cut, junk, tmp_path / f"missing{suffix}"):
        with pytest.raises(UnreadableImage) as e:
            read_image(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_bytes_decode_like_files(tmp_path, photos):
    path = photos.with_orientation(tmp_path / "o6.png", photos.photo(), 6)
    assert torch.equal(read_image(path.read_bytes(), name="upload.png"), read_image(path))
    with pytest.raises(UnreadableImage, match="upload.png"):
        read_image(b"\x89PNG\r\n\x1a\nxx", name="upload.png")
