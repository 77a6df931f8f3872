"""A real S3-compatible server on 127.0.0.1 for tests: moto, behind a small HTTP proxy.

The proxy forwards every request unchanged and (1) counts requests by method and key, so
tests can assert what a read fetched, and (2) injects faults on demand: 503 SlowDown
responses or connections reset without a response.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.server import ThreadedMotoServer

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[tuple[str, str, int]] = Counter()  # (method, path, status)
        # (method, path, access key id of the request's signature): which client sent it
        self.signers: Counter[tuple[str, str, str]] = Counter()
        self.faults: list[str] = []  # consumed one per matching request: "503" or "reset"
        self.fault_filter = ""  # only requests whose "METHOD path" contains this
        self.always_fail = ""  # like fault_filter, but never consumed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def inject(self, *faults: str, where: str = "") -> None:
        with self.lock:
            self.faults = list(faults)
            self.fault_filter = where

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.statuses.clear()
            self.signers.clear()

    def by_method(self) -> Counter[str]:
        """Requests counted so far, per HTTP method."""
        with self.lock:
            out: Counter[str] = Counter()
            for (method, _), n in self.requests.items():
                out[method] += n
            return out

    def count(self, method: str, contains: str = "") -> int:
        with self.lock:
            return sum(n for (m, p), n in self.requests.items() if m == method and contains in p)

    def status_counts(self, method: str, path_suffix: str) -> Counter[int]:
        """Response statuses to ``method`` requests whose path ends with ``path_suffix``."""
        with self.lock:
            out: Counter[int] = Counter()
            for (m, p, status), n in self.statuses.items():
                if m == method and p.endswith(path_suffix):
                    out[status] += n
            return out

    def signed_by(self, method: str, contains: str = "") -> Counter[str]:
        """Requests per access key id (from the SigV4 ``Authorization`` header)."""
        with self.lock:
            out: Counter[str] = Counter()
            for (m, p, key), n in self.signers.items():
                if m == method and contains in p:
                    out[key] += n
            return out

    def keys(self, method: str, contains: str = "") -> list[str]:
        with self.lock:
            return sorted(p for (m, p) in self.requests if m == method and contains in p)


class _Handler(BaseHTTPRequestHandler):
    server: FaultyProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        path = urllib.parse.urlsplit(self.path).path
        label = f"{self.command} {self.path}"
        credential = self.headers.get("Authorization", "").partition("Credential=")[2]
        signer = credential.split("/", 1)[0] or "-"
        with self.server.lock:
            self.server.requests[(self.command, path)] += 1
            self.server.signers[(self.command, path, signer)] += 1
            fault = None
            if self.server.always_fail and self.server.always_fail in label:
                fault = "503"
            elif self.server.faults and self.server.fault_filter in label:
                fault = self.server.faults.pop(0)
        if fault == "reset":
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.close()
            self.close_connection = True
            return
        if fault == "503":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(_SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        with self.server.lock:
            self.server.statuses[(self.command, path, resp.status)] += 1
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in (
                "transfer-encoding",
                "content-length",
                "connection",
                "server",
                "date",
            ):
                self.send_header(key, value)
        # a HEAD response has no body but the object's length (s3fs reads a file's size from it)
        length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class S3Server:
    """moto on a free port, the proxy in front of it, and the environment to reach it."""

    ACCESS_KEY = "AKIACPRZARRTESTKEY01"
    SECRET_KEY = "cpr-zarr-test-secret-do-not-leak-42"

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        self.proxy = FaultyProxy(self.moto.get_host_and_port())
        self._thread = threading.Thread(target=self.proxy.serve_forever, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.proxy.url,
        }

    def make_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.proxy.url, aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1",
        )  # fmt: skip
        client.create_bucket(Bucket=name)

    def all_objects(self, bucket: str) -> dict[str, bytes]:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.proxy.url, aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1",
        )  # fmt: skip
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        self.proxy.shutdown()
        self.moto.stop()
