"""Real photos through predict and serve: EXIF-rotated phone pictures come out upright and the same through both,
a decompression bomb is refused in one line at small memory, and large images stay within a memory budget."""
from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg import inference
from fcnseg.cli import main
from fcnseg.data import get_dataset
from fcnseg.errors import UserError
from fcnseg.inference import Predictor
from fcnseg.train.checkpoint import model_from_checkpoint

INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # 6 and 8 undo each other; the rest are their own


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, make_checkpoint):
    return make_checkpoint(tmp_path_factory.mktemp("photos"), head="random")


@pytest.fixture(scope="module")
def upright() -> np.ndarray:
    image, _ = get_dataset("synthetic", None, "val", size=(72, 104))[0]
    return image.as_subclass(torch.Tensor).permute(1, 2, 0).numpy()


def test_predict_segments_every_exif_orientation_as_displayed(ckpt, upright, tmp_path, capsys, photos):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(upright).save(src / "upright.png")
    for o in range(1, 9):
        photos.with_orientation(src / f"o{o}.png", np.ascontiguousarray(photos.displayed(upright, INVERSE[o])), o)
    assert main(["predict", str(ckpt), str(src), "--out", str(tmp_path / "out"), "--amp", "none"]) == 0, \
        capsys.readouterr().err
    want = np.asarray(Image.open(tmp_path / "out" / "upright.png"))
    assert len(np.unique(want)) > 1  # a mask that can tell orientations apart
    for o in range(1, 9):
        got = np.asarray(Image.open(tmp_path / "out" / f"o{o}.png"))
        assert got.shape == want.shape == upright.shape[:2], o
        assert np.array_equal(got, want), f"orientation {o}"


def test_serve_and_predict_agree_on_a_rotated_phone_jpeg(ckpt, upright, tmp_path, capsys, photos):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from fcnseg.serve import create_app

    phone = photos.with_orientation(tmp_path / "phone.jpg", np.ascontiguousarray(np.rot90(upright, 1)), 6, quality=92)
    assert Image.open(phone).size == (72, 104)  # stored on its side
    assert main(["predict", str(ckpt), str(phone), "--out", str(tmp_path / "out"), "--amp", "none"]) == 0
    from_cli = np.asarray(Image.open(tmp_path / "out" / "phone.png"))
    with TestClient(create_app(ckpt, amp="none")) as client:
        r = client.post("/segment?format=png", files={"file": ("phone.jpg", phone.read_bytes(), "image/jpeg")})
    assert r.status_code == 200
    from_server = np.asarray(Image.open(io.BytesIO(r.content)))
    assert from_cli.shape == (72, 104)
    assert np.array_equal(from_cli, from_server)


def test_a_bomb_exits_2_in_one_line_at_small_memory(ckpt, tmp_path, photos):
    bomb = photos.png_bomb(tmp_path / "bomb.png", 12_000)
    # the peak resident memory of the process itself (VmHWM: /proc's high-water mark, which starts afresh at exec,
    # unlike getrusage's, which inherits the forking test process's)
    code = ("import atexit, runpy, sys; atexit.register(lambda: print([l for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')][0].split()[1], file=sys.stderr)); sys.argv = ['fcnseg', *sys.argv[1:]]; "
            "runpy.run_module('fcnseg', run_name='__main__')")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, "predict", str(ckpt), str(bomb), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    *lines, peak_kb = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"fcnseg: error: image {bomb} is 12000×12000") and "--max-pixels" in lines[0]
    assert int(peak_kb) < 1024 * 1024, f"{int(peak_kb) / 1024:.0f} MB"
    print(f"bomb refused in {seconds:.2f} s, peak RSS {int(peak_kb) / 1024:.0f} MB")
    r = subprocess.run([sys.executable, "-m", "fcnseg", "predict", str(ckpt), str(bomb), "--out", str(tmp_path / "o"),
                        "--max-pixels", "-3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--max-pixels must be 0" in r.stderr and "Traceback" not in r.stderr


def test_max_pixels_option_names_itself(ckpt, upright, tmp_path, capsys):
    Image.fromarray(upright).save(tmp_path / "a.png")
    assert main(["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--max-pixels", "1000"]) == 2
    err = capsys.readouterr().err
    assert "104×72 = 7,488 pixels, over the limit of 1,000" in err and "--max-pixels 7488" in err
    assert main(["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--max-pixels", "7488", "--amp", "none"]) == 0


def test_a_tight_memory_budget_tiles_the_image_and_gives_the_windowed_result(ckpt, upright, monkeypatch):
    model, _ = model_from_checkpoint(ckpt)
    image = torch.from_numpy(np.ascontiguousarray(np.tile(upright, (3, 3, 1)))).permute(2, 0, 1)[None]  # 216×312
    monkeypatch.setattr(inference, "PLAN_ABOVE_PIXELS", 0)
    roomy = Predictor(model, "cpu", amp="none", memory_budget=2**34)
    assert roomy.plan_window(1, (216, 312), (216, 312), [1.0], None) is None
    whole = roomy.predict_image(image)
    per_pixel = roomy.forward_bytes(216 * 312) / (216 * 312)
    outputs = 216 * 312 * (12 * model.num_classes + inference.OUTPUT_BYTES_PER_PIXEL + 4 * model.num_classes + 16)
    tight = Predictor(model, "cpu", amp="none", memory_budget=int(outputs + per_pixel * 150 * 150))
    window = tight.plan_window(1, (216, 312), (216, 312), [1.0], None)
    assert window is not None and 64 <= window < 216 and window % 32 == 0
    tiled = tight.predict_image(image)
    assert torch.equal(tiled, roomy.predict_image(image, window=window))
    assert tiled.shape == whole.shape and torch.allclose(tiled.sum(1), torch.ones(1, 216, 312))
    # class scores alone over the budget: refused before anything is allocated, in one line
    with pytest.raises(UserError, match=r"a 312×216 image needs about .* more than the memory budget"):
        Predictor(model, "cpu", amp="none", memory_budget=1000).predict_image(image)


def test_forward_estimate_grows_with_the_image(ckpt):
    model, _ = model_from_checkpoint(ckpt)
    p = Predictor(model, "cpu", amp="none")
    small, large = p.forward_bytes(256 * 256), p.forward_bytes(1024 * 1024)
    # ResNet-18's largest layer pair is at stride 2 with 64 channels: ≥ 2 × 64 × 4 bytes / 4 per input pixel
    assert 1024 * 1024 * 128 <= large and 10 < large / small < 17


def test_the_command_line_checks_predict_inputs_before_loading_torch(ckpt, tmp_path, photos):
    """`import fcnseg` and the command line's entry load no torch (4–7 s here), so that a bomb, a missing file or a
    file that is no image is refused at once; the library loads when a command runs."""
    bomb = photos.png_bomb(tmp_path / "bomb.png", 12_000)
    code = ("import sys; from fcnseg.cli import main; import fcnseg; "
            f"rc = main(['predict', {str(ckpt)!r}, {str(bomb)!r}, '--out', 'o']); "
            "assert rc == 2 and 'torch' not in sys.modules and 'torchvision' not in sys.modules, rc; "
            "print(fcnseg.__version__, 'ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
    assert "over the limit of 100,000,000" in r.stderr
    import fcnseg
    assert callable(fcnseg.build_model) and fcnseg.Predictor is Predictor  # the API still resolves on use
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fcnseg.nope  # noqa: B018


def test_max_pixels_does_not_outlive_its_command(ckpt, upright, tmp_path, capsys):
    from fcnseg.data.io import read_image
    Image.fromarray(upright).save(tmp_path / "a.png")
    assert main(["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--max-pixels", "10"]) == 2
    assert read_image(tmp_path / "a.png").shape == (3, 72, 104)  # the library's default limit again
