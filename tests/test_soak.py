"""Soak: a real `fcnseg serve` process on 127.0.0.1 takes a stream of valid images of several sizes mixed with
invalid uploads (non-images, truncated PNGs, empty files, oversized files, a wrong field, path-traversal names)
and keeps answering: every response is 200 or a 4xx with a JSON error, /healthz is still OK at the end, the process
is still alive, and its resident memory grows by less than a generous bound."""
from __future__ import annotations

import collections
import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

MAX_UPLOAD_MB = 1
RSS_GROWTH_LIMIT_MB = 200
SYNTHETIC_CONFIG = {"data": "synthetic", "val_split": "val", "data_options": {"size": [40, 48]},
                    "val_data_options": {"length": 2}}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def encoded(h: int, w: int, seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def payloads() -> list[tuple[str, dict, tuple[int, int] | None, int]]:
    """(kind, httpx `files`, expected (width, height) or None, expected status)."""
    valid = [(f"{w}x{h}.{fmt.lower()}", encoded(h, w, i, fmt), (w, h))
             for i, (h, w, fmt) in enumerate([(32, 32, "PNG"), (48, 64, "PNG"), (75, 100, "JPEG"), (150, 200, "PNG"),
                                              (240, 320, "JPEG"), (17, 301, "PNG")])]
    png = encoded(64, 64, 99)
    out = [(f"valid {n}", {"file": (n, data, "image/png")}, size, 200) for n, data, size in valid]
    out += [
        ("non-image", {"file": ("notes.txt", b"just some text\n" * 20, "text/plain")}, None, 415),
        ("truncated PNG", {"file": ("cut.png", png[: len(png) // 3], "image/png")}, None, 400),
        ("empty file", {"file": ("empty.png", b"", "image/png")}, None, 400),
        ("oversized", {"file": ("big.png", b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD_MB * 2**20 + 200_000),
                                "image/png")}, None, 413),
        ("wrong field", {"image": ("a.png", png, "image/png")}, None, 400),
        ("traversal name", {"file": ("../../../etc/shadow.png", png, "image/png")}, (64, 64), 200),
    ]
    return out


def soak(tmp_path: Path, ckpt: Path, port: int, requests: int, seed: int = 0) -> dict:
    log = open(tmp_path / "server.log", "wb")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    server = subprocess.Popen([sys.executable, "-m", "fcnseg", "serve", str(ckpt), "--host", "127.0.0.1", "--port",
                               str(port), "--max-upload-mb", str(MAX_UPLOAD_MB), "--device", "cpu"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 180
            while True:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            rss_start = rss_mb(server.pid)
            kinds = payloads()
            for kind, files, size, status in kinds[:6]:  # warm-up: first inference at each size allocates once
                assert client.post("/segment", files=files).status_code == 200
            rss_before = rss_mb(server.pid)
            rng = random.Random(seed)
            counts: collections.Counter = collections.Counter()
            by_kind: collections.Counter = collections.Counter()
            bad = []
            t0 = time.monotonic()
            for i in range(requests):
                kind, files, size, status = rng.choice(kinds)
                try:
                    r = client.post("/segment", files=files)
                except httpx.TransportError as e:
                    bad.append(f"request {i} ({kind}): connection failed: {e!r}")
                    counts["connection error"] += 1
                    continue
                counts[r.status_code] += 1
                by_kind[(kind, r.status_code)] += 1
                ok = r.status_code == 200 or (400 <= r.status_code < 500
                                              and r.headers.get("content-type", "").startswith("application/json")
                                              and "error" in r.json())
                if not ok or r.status_code != status:
                    bad.append(f"request {i} ({kind}): {r.status_code} {r.text[:200]}")
                elif size is not None and (r.json()["width"], r.json()["height"]) != size:
                    bad.append(f"request {i} ({kind}): size {r.json()['width']}x{r.json()['height']} != {size}")
            seconds = time.monotonic() - t0
            health = client.get("/healthz")
            rss_after = rss_mb(server.pid)
            alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    figures = {"requests": requests, "status_counts": dict(sorted(counts.items(), key=str)),
               "by_kind": {f"{k} → {s}": n for (k, s), n in sorted(by_kind.items())}, "bad": bad[:10],
               "rss_start_mb": round(rss_start, 1), "rss_before_mb": round(rss_before, 1),
               "rss_after_mb": round(rss_after, 1), "rss_growth_mb": round(rss_after - rss_before, 1),
               "healthz": health.status_code == 200 and health.json().get("status") == "ok", "alive": alive,
               "seconds": round(seconds, 1)}
    print(f"\nsoak: {figures}")
    return figures


def check_figures(figures: dict) -> None:
    assert not figures["bad"], figures["bad"]
    assert figures["alive"] and figures["healthz"]
    assert sum(figures["status_counts"].values()) == figures["requests"]
    assert {200, 400, 413, 415} <= set(figures["status_counts"])  # the mix really exercised each path
    assert figures["rss_growth_mb"] < RSS_GROWTH_LIMIT_MB, figures


def test_soak_100_requests(tmp_path, make_checkpoint, free_port):
    check_figures(soak(tmp_path, make_checkpoint(tmp_path / "model.pt", config=SYNTHETIC_CONFIG), free_port, 100))


@pytest.mark.slow
def test_soak_1000_requests(tmp_path, make_checkpoint, free_port):
    check_figures(soak(tmp_path, make_checkpoint(tmp_path / "model.pt", config=SYNTHETIC_CONFIG), free_port, 1000,
                       seed=1))
