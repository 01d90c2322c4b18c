"""host/usr/local/lib/registry-maintenance/backup_s3.py: AWS's own SigV4 example, and put/get/list/delete against an
in-process S3 stand-in on loopback (paths, listing pages, the file renamed only once complete)."""

from __future__ import annotations

import datetime
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from renderers import shipped

backup_s3: Any = shipped.module(shipped.BACKUP_S3)


def test_signature_matches_aws_documented_example() -> None:
    # AWS S3 API reference, "Signature Calculations for the Authorization Header", example GET Bucket (List Objects).
    config = {"region": "us-east-1", "access_key": "AKIAIOSFODNN7EXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    headers = backup_s3.signature_headers(
        config, "GET", "examplebucket.s3.amazonaws.com", "/", "max-keys=2&prefix=J",
        hashlib.sha256(b"").hexdigest(), datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC),
    )
    assert headers["Authorization"].endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


class Store:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                store.requests.append(("PUT", self.path))
                assert self.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/")
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert hashlib.sha256(body).hexdigest() == self.headers["x-amz-content-sha256"]
                store.objects[urlsplit(self.path).path] = body
                self._reply(200)

            def do_GET(self) -> None:
                store.requests.append(("GET", self.path))
                url = urlsplit(self.path)
                if url.query:
                    prefix = "/bucket/" + parse_qs(url.query).get("prefix", [""])[0]
                    keys = "".join(f"<Contents><Key>{k[len('/bucket/'):]}</Key></Contents>"
                                   for k in sorted(store.objects) if k.startswith(prefix))
                    xml = f'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{keys}<IsTruncated>false</IsTruncated></ListBucketResult>'
                    self._reply(200, xml.encode())
                elif url.path in store.objects:
                    self._reply(200, store.objects[url.path])
                else:
                    self._reply(404, b"<Error><Code>NoSuchKey</Code></Error>")

            def do_DELETE(self) -> None:
                store.requests.append(("DELETE", self.path))
                store.objects.pop(urlsplit(self.path).path, None)
                self._reply(204)

        return Handler


@pytest.fixture
def bucket() -> Iterator[tuple[Any, Store]]:
    store = Store()
    server = ThreadingHTTPServer(("127.0.0.1", 0), store.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = {"endpoint": f"http://127.0.0.1:{server.server_address[1]}", "region": "us-east-1", "bucket": "bucket",
                  "prefix": "registry/prod", "access_key": "AK", "secret_key": "SK", "ca_file": ""}
        yield backup_s3.Bucket(config), store
    finally:
        server.shutdown()
        server.server_close()


def test_put_get_list_delete_round_trip(bucket: tuple[Any, Store], tmp_path: Path) -> None:
    b, store = bucket
    archive = tmp_path / "registry-20260101T023000Z.tar"
    archive.write_bytes(b"x" * 3_000_000)
    b.put(str(archive), archive.name)
    assert store.requests[-1] == ("PUT", "/bucket/registry/prod/registry-20260101T023000Z.tar")
    assert b.list() == ["registry-20260101T023000Z.tar"]
    b.get(archive.name, str(tmp_path / "back.tar"))
    assert (tmp_path / "back.tar").read_bytes() == archive.read_bytes()
    assert not (tmp_path / "back.tar.partial").exists()
    b.delete(archive.name)
    assert b.list() == []


def test_a_missing_copy_fails_naming_it_and_leaves_no_file(bucket: tuple[Any, Store], tmp_path: Path) -> None:
    b, _ = bucket
    with pytest.raises(backup_s3.S3Error, match=r"download of registry-x\.tar: HTTP 404"):
        b.get("registry-x.tar", str(tmp_path / "x.tar"))
    assert list(tmp_path.iterdir()) == []
