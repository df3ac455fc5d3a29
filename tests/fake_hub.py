"""A real HTTP server on 127.0.0.1 that answers like the Hugging Face hub, for download tests."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import re
import socket
import threading

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves files at /{repo}/resolve/{revision}/{file} with the headers the hub sends (X-Repo-Commit, an
    ETag that is the file's sha256, Content-Length, Range requests). Knobs: cut the first body after N
    bytes; serve bytes that differ from the advertised sha256."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.cut_first_body_after: int | None = None
        self.corrupt = False
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self._bodies = 0
        self.lock = threading.Lock()

    def handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                with hub.lock:
                    hub.requests.append((self.command, self.path, self.headers.get("Range"),
                                         self.headers.get("Authorization")))
                m = re.match(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)", self.path)
                data = hub.files.get((m["repo"], m["file"])) if m else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                sha = hashlib.sha256(data).hexdigest()
                if hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                self.send_response(206 if rng else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{sha}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                with hub.lock:
                    hub._bodies += 1
                    cut = hub.cut_first_body_after if hub._bodies == 1 else None
                payload = data[start:]
                try:
                    if cut is not None:
                        self.wfile.write(payload[:cut])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):   # the client cancelled mid-file
                    self.close_connection = True

        return Handler

    def ranges(self) -> list[str]:
        return [r for method, _, r, _ in self.requests if method == "GET" and r]




@contextlib.contextmanager
def serve_fake_hub(files: dict[tuple[str, str], bytes]):
    """Serve ``{(repo id, file name): bytes}``; yields the FakeHub with ``.url`` set."""
    fake = FakeHub()
    fake.files.update(files)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
