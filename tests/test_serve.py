"""``fcnseg serve``: the HTTP API through an in-process client (no socket), one real server started by the CLI."""
from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.cli import main
from fcnseg.data import get_dataset
from fcnseg.data.synthetic import CLASSES, PALETTE
from fcnseg.errors import UserError
from fcnseg.inference import Predictor
from fcnseg.train.checkpoint import model_from_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from fcnseg.serve import create_app  # noqa: E402


def png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, make_checkpoint):
    return make_checkpoint(tmp_path_factory.mktemp("serve"), head="random")


@pytest.fixture(scope="module")
def client(ckpt):
    with TestClient(create_app(ckpt, max_upload_mb=1, amp="none")) as c:
        yield c


@pytest.fixture(scope="module")
def scene():
    image, _ = get_dataset("synthetic", None, "val", size=(96, 128))[0]
    return image.as_subclass(torch.Tensor)


def expected_mask(ckpt, image):
    model, _ = model_from_checkpoint(ckpt)
    return Predictor(model, "cpu", amp="none").predict_image(image[None])[0].argmax(0)


def test_healthz_reports_the_model(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["max_upload_mb"] == 1
    assert h["model"]["classes"] == list(CLASSES) and h["model"]["palette"] == [list(c) for c in PALETTE]
    assert (h["model"]["arch"], h["model"]["backbone"], h["model"]["format"]) == ("fcn8s", "resnet18", "checkpoint")


def test_index_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element in ('id="file"', 'id="opacity"', 'id="overlay"', 'id="mask"', 'id="legend"', 'id="download"'):
        assert element in r.text
    assert "connect-src 'self'" in r.headers["content-security-policy"]


def test_segment_json_matches_predictor(client, ckpt, scene):
    r = client.post("/segment", files={"file": ("scene.png", png(scene), "image/png")})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["width"], d["height"], d["filename"], d["download_name"]) == (128, 96, "scene.png", "scene_mask.png")
    mask_im = Image.open(io.BytesIO(base64.b64decode(d["mask_png"])))
    assert mask_im.mode == "P" and mask_im.size == (128, 96)
    assert mask_im.getpalette()[:3 * len(PALETTE)] == [v for c in PALETTE for v in c]
    mask = torch.from_numpy(np.asarray(mask_im).astype(np.int64))
    expected = expected_mask(ckpt, scene)
    assert (mask == expected).double().mean() >= 0.999
    assert len(expected.unique()) > 1  # a non-trivial prediction
    counts = torch.bincount(mask.flatten(), minlength=len(CLASSES))
    assert {c["index"] for c in d["classes"]} == set(torch.nonzero(counts).flatten().tolist())
    for c in d["classes"]:
        assert c["name"] == CLASSES[c["index"]] and c["color"] == list(PALETTE[c["index"]])
        assert c["pixels"] == counts[c["index"]]
        assert c["percent"] == pytest.approx(100 * c["pixels"] / mask.numel(), abs=1e-3)
    assert sum(c["percent"] for c in d["classes"]) == pytest.approx(100, abs=0.01)
    overlay = Image.open(io.BytesIO(base64.b64decode(d["overlay_png"])))
    assert overlay.mode == "RGB" and overlay.size == (128, 96)


def test_png_by_query_or_accept(client, scene):
    files = {"file": ("a.png", png(scene), "image/png")}
    by_query = client.post("/segment?format=png", files=files)
    by_accept = client.post("/segment", files=files, headers={"Accept": "image/png"})
    as_json = client.post("/segment", files=files, headers={"Accept": "application/json"})
    for r in (by_query, by_accept):
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        im = Image.open(io.BytesIO(r.content))
        assert im.mode == "P" and im.size == (128, 96)
    assert by_query.content == by_accept.content
    assert as_json.headers["content-type"] == "application/json"
    assert base64.b64decode(as_json.json()["mask_png"]) == by_query.content
    bad = client.post("/segment?format=gif", files=files)
    assert bad.status_code == 400 and "format must be png or json" in bad.json()["error"]


def mask_of(r) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["mask_png"])))).astype(np.int64))


def test_crf_by_query_or_form_field_refines_like_dense_crf(client, ckpt, scene):
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is an optional extra")
    from fcnseg.crf import dense_crf
    model, _ = model_from_checkpoint(ckpt)
    probs = Predictor(model, "cpu", amp="none").predict_image(scene[None])[0]
    assert client.get("/healthz").json()["crf"] == {"available": True, "default": False, "max_side": None}
    assert 'id="crf"' in client.get("/").text
    files = {"file": ("a.png", png(scene), "image/png")}
    by_query = client.post("/segment?crf=1", files=files)
    by_form = client.post("/segment", files=files, data={"crf": "on", "crf_max_side": "40"})
    plain = client.post("/segment?crf=0", files=files)
    assert by_query.json()["crf"] and by_form.json()["crf"] and not plain.json()["crf"]
    assert torch.equal(mask_of(by_query), dense_crf(scene, probs))
    assert torch.equal(mask_of(by_form), dense_crf(scene, probs, max_side=40))
    assert (mask_of(plain) == probs.argmax(0)).double().mean() >= 0.999
    assert not torch.equal(mask_of(by_query), mask_of(plain))
    for query, message in (("crf=maybe", "crf must be 1 or 0"), ("crf=1&crf_max_side=0", "crf_max_side must be")):
        r = client.post(f"/segment?{query}", files=files)
        assert r.status_code == 400 and message in r.json()["error"]


def test_crf_without_pydensecrf2_is_501_and_the_rest_still_works(client, ckpt, scene, monkeypatch):
    for module in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, module, None)  # as if pydensecrf2 were not installed
    files = {"file": ("a.png", png(scene), "image/png")}
    r = client.post("/segment?crf=1", files=files)
    assert r.status_code == 501 and "pip install 'fcnseg[crf]'" in r.json()["error"]
    assert client.post("/segment", files=files).status_code == 200
    with pytest.raises(UserError, match="needs pydensecrf2"):  # a server that refines by default does not start
        create_app(ckpt, crf=True)


def test_too_large_upload_is_413(client):
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(int(1.5 * 2**20))
    r = client.post("/segment", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "upload too large" in r.json()["error"] and "1 MB" in r.json()["error"]
    # without a Content-Length (chunked): the limit is enforced while streaming
    boundary = "xyzzy"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    r = client.post("/segment", content=chunks, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "upload too large" in r.json()["error"]


def test_non_image_is_415_and_corrupt_image_is_400(client, scene):
    r = client.post("/segment", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 415 and "notes.txt is not a supported image" in r.json()["error"]
    truncated = png(scene)[:200]
    r = client.post("/segment", files={"file": ("cut.png", truncated, "image/png")})
    assert r.status_code == 400 and "cannot read image cut.png" in r.json()["error"]
    r = client.post("/segment", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = client.post("/segment", data={"other": "x"}, files={"nofile": ("a.png", png(scene), "image/png")})
    assert r.status_code == 400 and "field 'file'" in r.json()["error"]
    r = client.post("/segment", content=png(scene), headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]


def test_path_traversal_filenames_are_only_echoed(client, scene, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    evil = '../../evil"\r\nX-Injected: 1.png'
    r = client.post("/segment?format=png", files={"file": (evil, png(scene), "image/png")})
    assert r.status_code == 200
    assert "x-injected" not in r.headers
    disposition = r.headers["content-disposition"]
    assert re.fullmatch(r'inline; filename="evil[A-Za-z0-9_-]*X-Injected__1_mask\.png"', disposition)
    r = client.post("/segment", files={"file": ("..\\..\\windows\\evil.png", png(scene), "image/png")})
    assert r.json()["filename"] == "evil.png"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["work"]  # nothing written anywhere near


def test_onnx_model_is_served_like_the_checkpoint(ckpt, scene, tmp_path):
    from fcnseg.export import export_checkpoint
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "m.onnx"
    export_checkpoint(ckpt, onnx_path, format="onnx")
    with TestClient(create_app(onnx_path)) as c:
        h = c.get("/healthz").json()
        assert h["model"]["format"] == "onnx" and h["model"]["classes"] == list(CLASSES)
        r = c.post("/segment?format=png", files={"file": ("s.png", png(scene), "image/png")})
    assert r.status_code == 200
    mask = torch.from_numpy(np.asarray(Image.open(io.BytesIO(r.content))).astype(np.int64))
    assert (mask == expected_mask(ckpt, scene)).double().mean() >= 0.999


def test_missing_model_is_a_user_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and len(err.strip().splitlines()) == 1


def test_cli_serve_prints_url_and_answers(ckpt, free_port):
    import httpx
    port = free_port
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg", "serve", str(ckpt), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not come up"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["model"]["classes"] == list(CLASSES)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_onnx_inception_pads_images_below_its_minimum(tmp_path, make_checkpoint):
    """Exported Inception graphs need H, W >= 75 (fcnseg.min_size); the server pads smaller images with the colour
    that normalises to zero, as the PyTorch backbone does, and crops the result back."""
    from fcnseg.export import export_checkpoint
    from fcnseg.serve import load_segmenter
    pytest.importorskip("onnxruntime")
    ckpt = make_checkpoint(tmp_path, backbone="inception_v3", head="random")
    export_checkpoint(ckpt, tmp_path / "m.onnx", format="onnx")
    segmenter = load_segmenter(tmp_path / "m.onnx")
    assert segmenter.min_size == 75
    for size in [(50, 60), (74, 200)]:
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        mask = segmenter(image)
        assert mask.shape == size
        assert (mask == expected_mask(ckpt, image)).double().mean() >= 0.99
