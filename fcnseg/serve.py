"""``fcnseg serve``: a small web app and HTTP API around one model (a checkpoint or an exported ``.onnx`` file).

``create_app(path)`` loads the model once and returns a FastAPI app:

* ``GET /`` — one HTML page (plain JS): upload or drop an image → overlay (opacity slider), mask, legend with
  class names and pixel shares, download of the index PNG.
* ``POST /segment`` — multipart field ``file``. ``?format=png`` (or ``Accept: image/png``) returns the palette index
  PNG (pixel value = class index); ``?format=json`` (the default) returns ``width``, ``height``, the ``classes``
  present (index, name, color, pixels, percent) and base64 PNGs ``mask_png`` (index PNG) and ``overlay_png``.
  ``crf=1`` (query parameter or form field; ``crf_max_side=PX`` likewise) refines the mask with DenseCRF, as
  ``fcnseg predict --crf``; without the optional pydensecrf2 that answers 501.
* ``GET /healthz`` — JSON model info.

Uploads are bounded (413), must be an image (415) that decodes (400); errors are ``{"error": "..."}``. The uploaded
file name is only echoed back, sanitised — never used as a path.
"""
# no ``from __future__ import annotations``: FastAPI reads the endpoint annotations (Request) at run time
import base64
import io
import json
import re
import threading
import time
from pathlib import Path, PurePosixPath

import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .crf import CRFUnavailable, dense_crf, require_crf
from .data import default_palette
from .data.io import ImageTooLarge, read_image
from .errors import UserError
from .inference import Predictor, resized_size
from .train.checkpoint import model_from_checkpoint
from .viz import overlay, to_pil

STATIC = Path(__file__).resolve().parent / "static"
MAX_PIXELS = 40_000_000  # decompression-bomb guard: a 40 MP image is ~120 MB of RGB before the model runs
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers on top of the file itself
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"P1", "PBM"), (b"P2", "PGM"),
               (b"P3", "PPM"), (b"P4", "PBM"), (b"P5", "PGM"), (b"P6", "PPM"))
SWITCH = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def sniff_image(data: bytes) -> str | None:
    """The image format named by the first bytes, or ``None`` when the data is not an image we decode."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in IMAGE_MAGIC if data.startswith(magic)), None)


def safe_name(name: str | None) -> str:
    """A display-only file name: the last path component, restricted to ``[A-Za-z0-9._-]``."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:100]
    return base or "image"


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Uploaded bytes → uint8 RGB 3×H×W through :func:`fcnseg.data.io.read_image` (the decoder ``predict`` uses,
    EXIF orientation applied); :class:`HTTPError` 415 / 400 / 413 for non-images, undecodable and oversized ones."""
    kind = sniff_image(data)
    if kind is None:
        raise HTTPError(415, f"{name} is not a supported image (PNG, JPEG, GIF, BMP, TIFF, WebP, PNM)")
    try:
        return read_image(data, name=name, max_pixels=max_pixels)
    except ImageTooLarge as e:
        raise HTTPError(413, str(e)) from None
    except UserError as e:
        raise HTTPError(400, f"{e} [{kind}]") from None


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def index_png(mask: torch.Tensor, palette) -> bytes:
    """A palette PNG (pixel value = class index, shown in the class colours), as bytes."""
    im = Image.fromarray(mask.to(torch.uint8).numpy(), mode="P")
    flat = [int(v) for c in palette for v in c][:768]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return png_bytes(im)


# --------------------------------------------------------------------------------------------------- segmenters
class TorchSegmenter:
    """A checkpoint through :class:`fcnseg.inference.Predictor` (the same path ``fcnseg predict`` takes)."""

    def __init__(self, path: Path, device: str = "auto", amp: str = "auto"):
        model, ckpt = model_from_checkpoint(path)
        self.predictor = Predictor(model, device, amp=amp)
        self.resize = (ckpt.get("config") or {}).get("resize")
        self.classes, self.palette = list(model.classes), _palette(model.palette, model.num_classes)
        self.info = {"format": "checkpoint", "arch": model.arch, "backbone": getattr(model, "backbone_name", None),
                     "num_classes": model.num_classes, "normalization": model.normalization.to_dict(),
                     "device": str(self.predictor.device), "iteration": ckpt.get("iteration")}

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        opts = {"input_size": self.resize} if self.resize else {}
        return self.predictor.predict_image(image[None], **opts)[0].cpu()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.probabilities(image).argmax(0)


class OnnxSegmenter:
    """An ``.onnx`` file written by ``fcnseg export`` (input: float RGB 0..255, normalisation folded in)."""

    def __init__(self, path: Path):
        try:  # lazy: an optional extra
            import onnxruntime as ort
        except ImportError:
            raise UserError("serving an .onnx file needs onnxruntime: pip install 'fcnseg[export]'") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"cannot load ONNX model {path}: {str(e).splitlines()[0][:200]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "fcnseg.classes" not in meta:
            raise UserError(f"{path} has no fcnseg metadata (classes, palette, normalisation): export it with "
                            "`fcnseg export CKPT --format onnx`")
        self.classes = json.loads(meta["fcnseg.classes"])
        self.palette = _palette(json.loads(meta.get("fcnseg.palette", "null")), len(self.classes))
        self.min_size = int(json.loads(meta.get("fcnseg.min_size", "1")))
        self.resize = json.loads(meta.get("fcnseg.resize", "null"))
        norm = json.loads(meta["fcnseg.normalization"])
        # the RGB 0..255 colour that normalises to zero: padding with it equals the model's zero padding
        fill = [m * 255.0 / norm.get("value_range", 1.0) for m in norm["mean"]]
        self.fill = torch.tensor(fill[::-1] if norm.get("bgr") else fill).view(3, 1, 1)
        spec = json.loads(meta.get("fcnseg.model_spec", "{}"))
        self.info = {"format": "onnx", "arch": spec.get("arch"), "backbone": spec.get("backbone"),
                     "num_classes": len(self.classes), "normalization": norm, "device": "cpu (onnxruntime)"}

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits(image).softmax(0)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits(image).argmax(0)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """C×H×W class scores at the image's size."""
        h, w = image.shape[-2:]
        x = image.float()[None]
        if self.resize:
            x = F.interpolate(x, size=resized_size(h, w, self.resize), mode="bilinear", align_corners=False,
                              antialias=True)
        xh, xw = x.shape[-2:]
        if xh < self.min_size or xw < self.min_size:  # Inception's minimum input, see fcnseg.export.MIN_SIZE
            canvas = self.fill.expand(1, 3, max(xh, self.min_size), max(xw, self.min_size)).clone()
            canvas[..., :xh, :xw] = x
            x = canvas
        logits = torch.from_numpy(self.session.run(None, {"image": x.numpy()})[0])[..., :xh, :xw]
        if (xh, xw) != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits[0]


def _palette(palette, n: int) -> list[list[int]]:
    palette = [list(map(int, c)) for c in (palette or [])]
    return palette + [list(c) for c in default_palette(n)][len(palette):n]


def load_segmenter(path: str | Path, device: str = "auto", amp: str = "auto"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path} (give a checkpoint .pt or an .onnx written by fcnseg export)")
    if path.suffix.lower() == ".onnx":
        return OnnxSegmenter(path)
    return TorchSegmenter(path, device, amp)


# -------------------------------------------------------------------------------------------------------- app
class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: reject request bodies over ``limit`` bytes with 413 — by Content-Length before reading,
    and by counting while streaming (chunked uploads), so an upload is never buffered beyond the limit."""

    def __init__(self, app, limit: int, message: str):
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._reject(send)
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = json.dumps({"error": self.message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(model_path: str | Path, *, max_upload_mb: float = 20.0, device: str = "auto", amp: str = "auto",
               max_pixels: int = MAX_PIXELS, crf: bool = False, crf_max_side: int | None = None):
    """The FastAPI app serving ``model_path`` (a checkpoint or an ``.onnx`` export), loaded once, here.

    ``crf`` / ``crf_max_side``: the DenseCRF refinement requests get unless they say ``crf=0`` / ``crf_max_side=PX``
    (``crf=True`` needs pydensecrf2 and fails here, at start, without it)."""
    try:  # lazy: an optional extra
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from starlette.formparsers import MultiPartException
    except ImportError as e:
        raise UserError(f"fcnseg serve needs {e.name}: pip install 'fcnseg[serve]'") from None

    if crf:
        require_crf()
    segmenter = load_segmenter(model_path, device, amp)
    crf_info = {"available": crf_available(), "default": crf, "max_side": crf_max_side}
    limit = int(max_upload_mb * 2**20)
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    lock = threading.Lock()  # one inference at a time: the model is shared and CPU-bound
    model_info = {"file": Path(model_path).name, **segmenter.info, "classes": segmenter.classes,
                  "palette": segmenter.palette}

    app = FastAPI(title="fcnseg", version=__version__, docs_url=None, redoc_url=None)
    app.state.segmenter = segmenter
    app.add_middleware(BodyLimit, limit=limit + MULTIPART_OVERHEAD,
                       message=f"upload too large: the limit is {max_upload_mb:g} MB (restart the server with "
                               "--max-upload-mb to raise it)")

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(HTTPError)
    async def _our_error(request, exc):
        return error(exc.status, exc.message)

    @app.middleware("http")
    async def _headers(request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'")
        return response

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model_info, "max_upload_mb": max_upload_mb, "crf": crf_info}

    def run(image: torch.Tensor, refine: bool, max_side: int | None) -> torch.Tensor:
        with lock:
            return dense_crf(image, segmenter.probabilities(image), max_side=max_side) if refine else segmenter(image)

    @app.post("/segment")
    async def segment(request: Request, format: str | None = None):  # noqa: A002 - the query parameter's name
        fmt = _choose_format(format, request.headers.get("accept", ""))
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPError(415, "send the image as multipart/form-data in the field 'file' "
                                 "(curl -F file=@image.jpg URL/segment)")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except MultiPartException as e:
            raise HTTPError(400, f"malformed multipart upload: {e.message}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPError(400, "no file: send the image in the multipart field 'file'")
        refine, max_side = crf_request(request.query_params, form, default=crf, max_side=crf_max_side)
        name = safe_name(upload.filename)
        data = await upload.read()
        await form.close()
        if not data:
            raise HTTPError(400, f"{name} is empty")
        image = await run_in_threadpool(decode_image, data, name, max_pixels)
        t0 = time.perf_counter()
        mask = await run_in_threadpool(run, image, refine, max_side)
        elapsed = (time.perf_counter() - t0) * 1000
        stem = name.rsplit(".", 1)[0] or "image"
        mask_png = index_png(mask, segmenter.palette)
        if fmt == "png":
            return Response(mask_png, media_type="image/png",
                            headers={"Content-Disposition": f'inline; filename="{stem}_mask.png"'})
        counts = torch.bincount(mask.flatten().long(), minlength=len(segmenter.classes))
        total = int(mask.numel())
        present = [{"index": c, "name": _class_name(segmenter.classes, c), "color": _color(segmenter.palette, c),
                    "pixels": int(counts[c]), "percent": round(100.0 * int(counts[c]) / total, 3)}
                   for c in counts.argsort(descending=True).tolist() if counts[c] > 0]
        ov = png_bytes(to_pil(overlay(image, mask, segmenter.palette, 0.5)))
        return {"filename": name, "width": int(image.shape[-1]), "height": int(image.shape[-2]),
                "classes": present, "mask_png": base64.b64encode(mask_png).decode("ascii"),
                "overlay_png": base64.b64encode(ov).decode("ascii"), "elapsed_ms": round(elapsed, 1),
                "download_name": f"{stem}_mask.png", "crf": refine}

    return app


def crf_available() -> bool:
    try:
        require_crf()
    except CRFUnavailable:
        return False
    return True


def crf_request(query, form, *, default: bool, max_side: int | None) -> tuple[bool, int | None]:
    """A request's ``crf`` and ``crf_max_side`` (form field, else query parameter, else the server's default);
    :class:`HTTPError` 400 for a value that is neither, 501 for ``crf=1`` without pydensecrf2."""
    def get(key):
        value = form.get(key)
        return query.get(key) if value is None else value

    crf = get("crf")
    if crf is not None:
        if not isinstance(crf, str) or crf.lower() not in SWITCH:
            raise HTTPError(400, f"crf must be 1 or 0 (true/false, on/off), got {str(crf)[:40]!r}")
        default = SWITCH[crf.lower()]
    side = get("crf_max_side")
    if side not in (None, ""):
        if not isinstance(side, str) or not (side.isascii() and side.isdigit()) or int(side) < 1:
            raise HTTPError(400, f"crf_max_side must be a whole number of pixels >= 1, got {str(side)[:40]!r}")
        max_side = int(side)
    if default and not crf_available():
        raise HTTPError(501, "crf=1: DenseCRF is not installed on this server (pip install 'fcnseg[crf]' there, or "
                             "send the request without crf)")
    return default, max_side


def _class_name(classes, c: int) -> str:
    return str(classes[c]) if c < len(classes) else str(c)


def _color(palette, c: int) -> list[int]:
    return list(palette[c]) if c < len(palette) else [0, 0, 0]


def _choose_format(query: str | None, accept: str) -> str:
    if query is not None:
        if query not in ("png", "json"):
            raise HTTPError(400, f"format must be png or json, got {query!r}")
        return query
    accept = accept.lower()
    if "image/png" in accept and "application/json" not in accept:
        return "png"
    return "json"  # the default, also for */*
