"""A stand-in for the Hugging Face hub on 127.0.0.1: it serves local folders as model repositories.

huggingface_hub honours $HF_ENDPOINT, and transformers, timm and open_clip all fetch through it, so a process
started with HF_ENDPOINT pointing here fetches from these folders as it would from the hub: the file URLs
(`/{repo}/resolve/{revision}/{file}`, HEAD and GET, with the commit and ETag headers the client checks, and the
hub's 404 with `X-Error-Code` for a missing file) and the listings under `/api/models/{repo}`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "1" * 40


def serve(repos: dict[str, Path]) -> ThreadingHTTPServer:
    """Start serving `repos` (repo id -> folder) on a free port; `server.requests` lists what was asked."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self._route(head=False)

        def do_HEAD(self):
            self._route(head=True)

        def _route(self, head: bool) -> None:
            path = self.path.split("?")[0]
            requests.append(f"{self.command} {path}")
            for repo, folder in repos.items():
                if path.startswith(f"/{repo}/resolve/"):
                    name = path[len(f"/{repo}/resolve/") :].split("/", 1)[1]
                    file = folder / name
                    if not file.is_file():
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, head)
                    data = file.read_bytes()
                    etag = f'"{hashlib.sha256(data).hexdigest()}"'
                    return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": etag}, head)
                if path.startswith(f"/api/models/{repo}"):
                    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                    if "/tree/" in path:
                        body = [
                            {"type": "file", "path": f, "size": (folder / f).stat().st_size, "oid": COMMIT}
                            for f in files
                        ]
                    else:
                        body = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                    return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

        def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = requests
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
