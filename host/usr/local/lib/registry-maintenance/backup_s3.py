"""Off-server copies of the backup archives in an S3-compatible bucket (Python standard library only, AWS SigV4).

    backup_s3.py CONFIG put FILE NAME     upload FILE as PREFIX/NAME (single PUT: at most 5 GiB)
    backup_s3.py CONFIG get NAME FILE     download PREFIX/NAME into FILE (written aside, renamed when complete)
    backup_s3.py CONFIG list              the archive names under PREFIX, oldest first
    backup_s3.py CONFIG delete NAME       remove PREFIX/NAME

CONFIG is a root-only JSON file: endpoint (empty: AWS S3), region, bucket, prefix, access_key, secret_key, ca_file.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import http.client
import json
import os
import ssl
import sys
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

MAX_PUT = 5 * 1024**3
CHUNK = 1024 * 1024


class S3Error(Exception):
    """A request the store refused or could not answer."""


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signature_headers(
    config: Mapping[str, str], method: str, host: str, path: str, query: str, payload_sha256: str, now: datetime.datetime
) -> dict[str, str]:
    """The SigV4 headers (Authorization, x-amz-date, x-amz-content-sha256) of one request."""
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, path, query, *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload_sha256,
    ])
    scope = f"{day}/{config['region']}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(f"AWS4{config['secret_key']}".encode(), day), config["region"]), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={config['access_key']}/{scope}, SignedHeaders={signed}, Signature={signature}",
        "x-amz-date": stamp,
        "x-amz-content-sha256": payload_sha256,
    }


class Bucket:
    def __init__(self, config: Mapping[str, str]) -> None:
        self.config = config
        endpoint = config.get("endpoint") or ""
        if endpoint:  # path-style: what self-hosted stores need
            url = urllib.parse.urlsplit(endpoint)
            self.scheme, self.host, self.base = url.scheme, url.netloc, f"/{config['bucket']}"
        else:
            self.scheme, self.host, self.base = "https", f"{config['bucket']}.s3.{config['region']}.amazonaws.com", ""
        self.prefix = (config.get("prefix") or "").strip("/")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "http":
            return http.client.HTTPConnection(self.host, timeout=60)
        context = ssl.create_default_context(cafile=self.config.get("ca_file") or None)
        return http.client.HTTPSConnection(self.host, timeout=60, context=context)

    def request(
        self, method: str, key: str = "", query: Mapping[str, str] | None = None,
        body: BinaryIO | None = None, length: int = 0, payload_sha256: str = hashlib.sha256(b"").hexdigest(),
    ) -> tuple[int, http.client.HTTPResponse, http.client.HTTPConnection]:
        path = self.base + "/" + urllib.parse.quote(key, safe="/-_.~") if key else (self.base + "/")
        qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted((query or {}).items()))
        headers = signature_headers(self.config, method, self.host, path, qs, payload_sha256, datetime.datetime.now(datetime.UTC))
        conn = self._connection()
        conn.putrequest(method, path + (f"?{qs}" if qs else ""), skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", self.host)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        if body is not None:
            while chunk := body.read(CHUNK):
                conn.send(chunk)
        response = conn.getresponse()
        return response.status, response, conn

    def _checked(self, what: str, status: int, response: http.client.HTTPResponse, ok: Sequence[int] = (200,)) -> bytes:
        data = response.read()
        if status not in ok:
            raise S3Error(f"{what}: HTTP {status} from {self.scheme}://{self.host}{self.base}: {data[:300].decode(errors='replace')}")
        return data

    def put(self, path: str, name: str) -> None:
        size = os.path.getsize(path)
        if size > MAX_PUT:
            raise S3Error(f"{path} is {size} bytes: one PUT takes at most 5 GiB (multipart uploads are not implemented)")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        with open(path, "rb") as fh:
            status, response, conn = self.request("PUT", self.key(name), body=fh, length=size, payload_sha256=digest.hexdigest())
            with contextlib.closing(conn):
                self._checked(f"upload of {name}", status, response)

    def get(self, name: str, dest: str) -> None:
        status, response, conn = self.request("GET", self.key(name))
        with contextlib.closing(conn):
            if status != 200:
                self._checked(f"download of {name}", status, response)
            partial = f"{dest}.partial"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
            os.replace(partial, dest)

    def list(self) -> list[str]:
        names: list[str] = []
        token = ""
        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        while True:
            query = {"list-type": "2", "prefix": self.key("")}
            if token:
                query["continuation-token"] = token
            status, response, conn = self.request("GET", query=query)
            with contextlib.closing(conn):
                root = ET.fromstring(self._checked("listing", status, response))  # noqa: S314 (the configured, authenticated store)
            for item in root.iter(f"{ns}Contents"):
                key = item.findtext(f"{ns}Key") or ""
                names.append(key[len(self.key("")):])
            token = root.findtext(f"{ns}NextContinuationToken") or ""
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return sorted(n for n in names if "/" not in n)

    def delete(self, name: str) -> None:
        status, response, conn = self.request("DELETE", self.key(name))
        with contextlib.closing(conn):
            self._checked(f"delete of {name}", status, response, ok=(200, 204))


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        config: dict[str, Any] = json.load(fh)
    bucket = Bucket(config)
    command, args = argv[1], list(argv[2:])
    try:
        if command == "put" and len(args) == 2:
            bucket.put(args[0], args[1])
        elif command == "get" and len(args) == 2:
            bucket.get(args[0], args[1])
        elif command == "list" and not args:
            print("\n".join(bucket.list()))
        elif command == "delete" and len(args) == 1:
            bucket.delete(args[0])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (S3Error, OSError, ET.ParseError) as exc:
        print(f"backup_s3: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
