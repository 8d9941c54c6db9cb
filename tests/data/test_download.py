"""`cemg data download` against a real HTTP server on 127.0.0.1 serving files built in the test.

The server honours Range requests and can corrupt or cut short chosen responses, so resuming,
verification and retries run over real sockets. Nothing here touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from cemg.config import load_config
from cemg.data.download import CorruptError, DownloadError, Fetcher, Sources, check_gzip, download_amazon
from cemg.data.load import load_dataset


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)  # path -> how many responses to corrupt
    truncate: dict[str, int] = field(default_factory=dict)  # path -> how many responses to cut short
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if state.corrupt.get(self.path, 0) > 0:
            state.corrupt[self.path] -= 1
            body = bytes(b ^ 0x5A for b in body)  # same length: only the content check can tell
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if state.truncate.get(self.path, 0) > 0:
            state.truncate[self.path] -= 1
            self.wfile.write(chunk[: len(chunk) // 2])
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="PNG")
    return buffer.getvalue()


SEQUENCES = b"1 1 2 3\n2 2 3 4\n3 4 1\n"


def publish_category(state: ServerState, base: str) -> Sources:
    """A four-item category 'Toy': A1 has an image, A2's image is gone (404), A3 has no imUrl,
    A4's image is not an image; A9 is in the metadata but not in the sequences."""
    records = [
        {"asin": "A1", "title": "Robot", "brand": "Acme", "imUrl": f"{base}/img/A1.jpg",
         "categories": [["Toys", "Robots"], ["Toys", "Gifts"]], "salesRank": {"Toys": 7}, "price": 9.5},
        {"asin": "A2", "title": "Kite", "imUrl": f"{base}/img/A2.jpg", "categories": [["Toys"]]},
        {"asin": "A3", "title": "Ball", "description": "It's round", "categories": [["Toys", "Balls"]]},
        {"asin": "A4", "title": "Yo-yo", "imUrl": f"{base}/img/A4.jpg", "categories": [["Toys"]]},
        {"asin": "A9", "title": "Unused", "imUrl": f"{base}/img/A9.jpg", "categories": []},
    ]
    meta = "".join(repr(r) + "\n" for r in records).encode()  # Python literals, as McAuley's files
    state.files.update({
        "/s3rec/Toy.txt": SEQUENCES,
        "/maps/datamaps.json": json.dumps({"id2item": {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}}).encode(),
        "/meta/meta_Toy.json.gz": gzip.compress(meta),
        "/img/A1.jpg": png((200, 10, 10)),
        "/img/A4.jpg": b"<html>not an image</html>",
        "/img/A9.jpg": png((0, 0, 0)),
    })
    return Sources(f"{base}/s3rec", f"{base}/meta", f"{base}/maps/datamaps.json")


def test_download_lands_complete_files_and_counts_missing_images(server, tmp_path):
    state, base = server
    sources = publish_category(state, base)
    digests = {f"{base}/s3rec/Toy.txt": hashlib.sha256(SEQUENCES).hexdigest()}
    out = tmp_path / "Toy"
    report = download_amazon("Toy", out, sources, digests=digests, workers=3, backoff=0, retries=2)

    assert (out / "Toy.txt").read_bytes() == SEQUENCES
    assert (out / "meta_Toy.json.gz").read_bytes() == state.files["/meta/meta_Toy.json.gz"]
    assert (out / "images" / "A1.jpg").read_bytes() == state.files["/img/A1.jpg"]
    assert not list(out.rglob("*.part")) and not (out / "images" / "A4.jpg").exists()
    assert state.gets("/img/A9.jpg") == []  # only items in the sequence file
    assert (report.items, report.items_with_metadata) == (4, 4)
    assert (report.images_ok, report.images_no_url, report.images_missing, report.images_corrupt) == (1, 1, 1, 1)
    assert len(state.gets("/img/A4.jpg")) == 2  # a corrupt image is retried before it is counted

    with gzip.open(out / "items.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    assert [r["asin"] for r in rows] == ["A1", "A2", "A3", "A4"]
    assert rows[0]["categories"] == ["Toys", "Robots", "Gifts"] and rows[0]["sales_rank"] == 7
    assert [r["image"] for r in rows] == ["images/A1.jpg", None, None, None]
    assert json.loads((out / "download.json").read_text())["images_ok"] == 1

    # The written config loads with the s3rec reader, images included.
    data = load_config(out / "data.yaml").data.model_copy(update={"min_core": 0})
    ds = load_dataset(data)
    assert ds.items.keys == ["1", "2", "3", "4"] and ds.items.fields["title"][0] == "Robot"
    assert ds.items.image_refs[0] == "images/A1.jpg" and (ds.image_root / ds.items.image_refs[0]).is_file()

    # A second run finds the verified core files and does not fetch them again.
    before = len(state.gets("/meta/meta_Toy.json.gz"))
    download_amazon("Toy", out, sources, digests=digests, images=False, backoff=0)
    assert len(state.gets("/meta/meta_Toy.json.gz")) == before


def test_partial_part_file_is_resumed_with_a_range_request(server, tmp_path):
    state, base = server
    body = gzip.compress(bytes(range(256)) * 400)
    state.files["/big.gz"] = body
    half = len(body) // 2
    dest = tmp_path / "big.gz"
    (tmp_path / "big.gz.part").write_bytes(body[:half])
    Fetcher(backoff=0).fetch(f"{base}/big.gz", dest, check=check_gzip, progress=False)
    assert dest.read_bytes() == body
    assert state.gets("/big.gz") == [f"bytes={half}-"]


def test_connection_cut_midway_resumes_where_it_stopped(server, tmp_path):
    state, base = server
    body = gzip.compress(random.Random(0).randbytes(400_000))  # incompressible: several chunks
    state.files["/cut.gz"] = body
    state.truncate["/cut.gz"] = 1
    Fetcher(backoff=0).fetch(f"{base}/cut.gz", tmp_path / "cut.gz", check=check_gzip, progress=False)
    assert (tmp_path / "cut.gz").read_bytes() == body
    first, second = state.gets("/cut.gz")
    # The chunks that arrived before the cut were kept (the one being read when it broke is lost).
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    assert first is None and 0 < resumed_at <= len(body) // 2


def test_complete_part_file_is_accepted_after_416(server, tmp_path):
    state, base = server
    state.files["/done.gz"] = body = gzip.compress(b"x" * 1000)
    (tmp_path / "done.gz.part").write_bytes(body)
    Fetcher(backoff=0).fetch(f"{base}/done.gz", tmp_path / "done.gz", check=check_gzip, progress=False)
    assert (tmp_path / "done.gz").read_bytes() == body and not (tmp_path / "done.gz.part").exists()


def test_corrupt_download_is_detected_and_retried_from_scratch(server, tmp_path):
    state, base = server
    state.files["/seq.txt"] = SEQUENCES
    state.corrupt["/seq.txt"] = 1
    digest = hashlib.sha256(SEQUENCES).hexdigest()
    Fetcher(backoff=0).fetch(f"{base}/seq.txt", tmp_path / "seq.txt", sha256=digest, progress=False)
    assert (tmp_path / "seq.txt").read_bytes() == SEQUENCES
    assert state.gets("/seq.txt") == [None, None]  # the bad copy was discarded, not resumed


def test_persistently_corrupt_download_is_reported(server, tmp_path):
    state, base = server
    state.files["/meta.json.gz"] = gzip.compress(b"{'asin': 'A1'}\n" * 100)
    state.corrupt["/meta.json.gz"] = 99
    with pytest.raises(CorruptError) as info:
        Fetcher(retries=3, backoff=0).fetch(f"{base}/meta.json.gz", tmp_path / "m.gz", check=check_gzip,
                                            progress=False)
    message = str(info.value)
    assert f"{base}/meta.json.gz" in message and "3 attempts" in message and "gzip" in message
    assert len(state.gets("/meta.json.gz")) == 3 and not (tmp_path / "m.gz").exists()


def test_missing_core_file_and_mismatched_datamaps_are_errors(server, tmp_path):
    state, base = server
    sources = publish_category(state, base)
    del state.files["/meta/meta_Toy.json.gz"]
    with pytest.raises(DownloadError, match="meta_Toy.json.gz: HTTP 404"):
        download_amazon("Toy", tmp_path / "a", sources, images=False, backoff=0)

    sources = publish_category(state, base)
    state.files["/maps/datamaps.json"] = json.dumps({"id2item": {"1": "A1"}}).encode()
    with pytest.raises(DownloadError, match=r"datamaps.json, field 'id2item': does not match"):
        download_amazon("Toy", tmp_path / "b", sources, images=False, backoff=0)


def test_unknown_category_needs_a_datamaps_url():
    with pytest.raises(DownloadError, match="--datamaps-url"):
        Sources().urls("Baby")


def test_cli_download(server, tmp_path):
    from typer.testing import CliRunner

    from cemg.cli import app

    state, base = server
    publish_category(state, base)
    result = CliRunner().invoke(app, [
        "data", "download", "Toy", "--out", str(tmp_path / "Toy"), "--quiet",
        "--s3rec-url", f"{base}/s3rec", "--meta-url", f"{base}/meta", "--datamaps-url", f"{base}/maps/datamaps.json",
        "--workers", "2", "--retries", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "4 items (4 with metadata)" in result.output
    assert "images: 1 ok, 1 without URL, 1 missing, 1 corrupt" in result.output
    assert len(state.gets("/img/A4.jpg")) == 1  # --retries 1
