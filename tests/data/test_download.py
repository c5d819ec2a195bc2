"""Downloads without the network: files are served from a local http.server on 127.0.0.1 in a thread."""
from __future__ import annotations

import hashlib
import io
import random
import tarfile
import threading
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fcnseg.data.download import DATASETS, DatasetSource, RemoteFile, download, extract
from fcnseg.errors import UserError

UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused at once


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (name → bytes); honours Range unless ``server.ranges`` is False; with
    ``server.cut`` it announces the full length but closes after that many bytes."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        self.wfile.write(body[: srv.cut] if srv.cut is not None else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.log, srv.ranges, srv.cut = {}, [], True, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    thread = threading.Thread(target=partial(srv.serve_forever, poll_interval=0.02), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


PAYLOAD = make_tar({"toyset/data/a.txt": b"hello" * 1000, "toyset/b.bin": random.Random(0).randbytes(8000)})
assert len(PAYLOAD) > 8000  # incompressible: the resume tests cut it at 500 and 1000 bytes


def toy(monkeypatch, url: str, md5: str | None = hashlib.md5(PAYLOAD).hexdigest(), name="toy.tar.gz"):
    src = DatasetSource((RemoteFile(url + name, name, md5=md5),), reader_root="toyset")
    monkeypatch.setitem(DATASETS, "toy", src)
    return src


def test_download_verify_extract(tmp_path, server, monkeypatch):
    server.files["toy.tar.gz"] = PAYLOAD
    toy(monkeypatch, server.url)
    out = download("toy", tmp_path / "data", progress=False)
    assert out == tmp_path / "data" / "toyset"
    assert (out / "data" / "a.txt").read_bytes() == b"hello" * 1000
    assert (tmp_path / "data" / "toy.tar.gz").read_bytes() == PAYLOAD
    assert not (tmp_path / "data" / "toy.tar.gz.part").exists()
    # a second call finds the verified archive and its extraction marker: no request at all
    server.log.clear()
    assert download("toy", tmp_path / "data", progress=False) == out and server.log == []


def test_resume_with_range(tmp_path, server, monkeypatch):
    server.files["toy.tar.gz"] = PAYLOAD
    toy(monkeypatch, server.url)
    (tmp_path / "toy.tar.gz.part").write_bytes(PAYLOAD[:1000])
    download("toy", tmp_path, progress=False)
    assert server.log == [("/toy.tar.gz", "bytes=1000-")]
    assert (tmp_path / "toy.tar.gz").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(tmp_path, server, monkeypatch):
    server.files["toy.tar.gz"], server.ranges = PAYLOAD, False
    toy(monkeypatch, server.url)
    (tmp_path / "toy.tar.gz.part").write_bytes(b"x" * 1000)
    download("toy", tmp_path, progress=False)
    assert (tmp_path / "toy.tar.gz").read_bytes() == PAYLOAD  # not appended to the stale bytes


def test_interrupted_download_keeps_part_then_resumes(tmp_path, server, monkeypatch):
    server.files["toy.tar.gz"], server.cut = PAYLOAD, 500
    toy(monkeypatch, server.url)
    with pytest.raises(UserError, match="rerun to resume"):
        download("toy", tmp_path, progress=False)
    assert (tmp_path / "toy.tar.gz.part").stat().st_size == 500 and not (tmp_path / "toy.tar.gz").exists()
    server.cut = None
    download("toy", tmp_path, progress=False)
    assert server.log[-1] == ("/toy.tar.gz", "bytes=500-") and (tmp_path / "toyset" / "b.bin").is_file()


def test_part_already_complete_gets_416(tmp_path, server, monkeypatch):
    server.files["toy.tar.gz"] = PAYLOAD
    toy(monkeypatch, server.url)
    (tmp_path / "toy.tar.gz.part").write_bytes(PAYLOAD)
    download("toy", tmp_path, progress=False)
    assert (tmp_path / "toyset" / "data" / "a.txt").is_file()


def test_checksum_mismatch(tmp_path, server, monkeypatch):
    server.files["toy.tar.gz"] = PAYLOAD
    toy(monkeypatch, server.url, md5="0" * 32)
    with pytest.raises(UserError, match=f"checksum mismatch for {server.url}toy.tar.gz \\(md5 "
                                        f"{hashlib.md5(PAYLOAD).hexdigest()}, expected 0{{32}}\\)"):
        download("toy", tmp_path, progress=False)
    assert not (tmp_path / "toy.tar.gz").exists() and not (tmp_path / "toyset").exists()


def test_offline_message_names_url_and_destination(tmp_path, monkeypatch):
    toy(monkeypatch, UNREACHABLE)
    with pytest.raises(UserError) as e:
        download("toy", tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot download {UNREACHABLE}toy.tar.gz (")
    assert msg.endswith(f"fetch {UNREACHABLE}toy.tar.gz by hand and save it as {tmp_path / 'toy.tar.gz'}, then rerun")


def test_present_archive_is_verified_and_extracted_offline(tmp_path, monkeypatch):
    toy(monkeypatch, UNREACHABLE)
    (tmp_path / "toy.tar.gz").write_bytes(PAYLOAD)
    assert download("toy", tmp_path, progress=False) == tmp_path / "toyset"
    assert (tmp_path / "toyset" / "data" / "a.txt").is_file()


def test_present_but_corrupt_archive(tmp_path, monkeypatch):
    toy(monkeypatch, UNREACHABLE)
    (tmp_path / "toy.tar.gz").write_bytes(PAYLOAD[:-10])
    with pytest.raises(UserError, match=f"{tmp_path / 'toy.tar.gz'} is corrupt or a different file .*delete it"):
        download("toy", tmp_path, progress=False)


def test_http_error(tmp_path, server, monkeypatch):
    toy(monkeypatch, server.url)
    with pytest.raises(UserError, match=f"download failed: HTTP 404 .* for {server.url}toy.tar.gz; fetch"):
        download("toy", tmp_path, progress=False)


@pytest.mark.parametrize("archive", [
    make_tar({"ok.txt": b"1", "../evil.txt": b"x"}),
    make_tar({"ok.txt": b"1"}, links={"link": "../../evil.txt"}),
    make_tar({"/tmp/evil.txt": b"x"}),
    make_zip({"ok.txt": b"1", "../evil.txt": b"x"}),
])
def test_extract_refuses_path_traversal(tmp_path, archive):
    (tmp_path / "a.bin").write_bytes(archive)
    dest = tmp_path / "sub" / "dest"
    with pytest.raises(UserError, match="has an unsafe member .*nothing extracted"):
        extract(tmp_path / "a.bin", dest)
    assert not (tmp_path / "sub" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (dest / "ok.txt").exists()


def test_extract_zip_and_garbage(tmp_path):
    (tmp_path / "a.zip").write_bytes(make_zip({"d/x.txt": b"42"}))
    extract(tmp_path / "a.zip", tmp_path / "out")
    assert (tmp_path / "out" / "d" / "x.txt").read_text() == "42"
    (tmp_path / "junk").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="is neither a tar nor a zip archive"):
        extract(tmp_path / "junk", tmp_path / "out")


def test_manual_dataset(tmp_path):
    with pytest.raises(UserError, match=f"register at https://www.cityscapes-dataset.com.* into {tmp_path}, then"):
        download("cityscapes", tmp_path, progress=False)
    for f in DATASETS["cityscapes"].files:  # files a person put there are extracted without network
        (tmp_path / f.filename).write_bytes(make_zip({f"{f.filename}.d/x": b"1"}))
    assert download("cityscapes", tmp_path, progress=False) == tmp_path / "."
    assert (tmp_path / "gtFine_trainvaltest.zip.d" / "x").is_file()


def test_table():
    with pytest.raises(UserError, match="no download recipe for 'nope'; valid: camvid, ccp"):
        download("nope", "/nonexistent", progress=False)
    from fcnseg.data import READERS
    assert set(DATASETS) == set(READERS) - {"synthetic", "folder"}
    for name, src in DATASETS.items():
        assert (src.files or src.manual) and all(f.url.startswith(("http://", "https://")) and f.filename
                                                 for f in src.files), name
    voc = DATASETS["voc2012"].files[0]
    assert (voc.url, voc.md5) == ("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                                  "6cd6e144f989b92b3379bac3b3de84fd")
    assert DATASETS["sbd"].files[0].md5 == "82b4d87ceb2ed10f6038a1cba92111cb"
