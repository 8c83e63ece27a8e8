"""A local stand-in for the DashScope HTTP API (the remote SaaS that `--prompt_extend_method
dashscope` calls), for tests: a threaded `http.server` on 127.0.0.1 that speaks the wire protocol
the official `dashscope` SDK speaks (spec §10.1):

- `POST /api/v1/services/aigc/text-generation/generation` — body `{"model", "input": {"messages"},
  "parameters": {"seed", "result_format": "message"}}`, header `Authorization: Bearer <key>`;
  answers `{"output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant",
  "content": "<text>"}}]}, "usage": {…}, "request_id": "…"}`.
- `GET /api/v1/uploads?action=getPolicy&model=<model>` — `{"request_id", "data": {OSS policy}}`
  whose `upload_host` is this server (`POST /oss`, multipart form as OSS takes it; the object key
  is the form's `key`).
- `POST /api/v1/services/aigc/multimodal-generation/generation` — as text generation, with list
  contents (`[{"text": …}, {"image": "oss://…"}]`); an `oss://` URL is resolved only with header
  `X-DashScope-OssResourceResolve: enable` and must name an uploaded object; the answer's content
  is `[{"text": "<text>"}]`.
- Errors as DashScope sends them: a non-200 status with `{"code", "message", "request_id"}`
  (401 `InvalidApiKey` for a wrong key, 400 `InvalidParameter` for a malformed request).

    with DashScopeStandIn(api_key="sk-test") as server:
        os.environ["DASH_API_URL"] = server.base_url      # http://127.0.0.1:<port>/api/v1
        ...
        server.requests                                   # every request, parsed

`mode`: "ok" (default), "error" (500 `InternalError` on generation calls), "hang" (generation
calls answer after `hang_s`). `reply(messages, model)` makes the answer text (default: a fixed
rewrite that quotes the user's text).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_PREFIX = "/api/v1"
TEXT_PATH = f"{API_PREFIX}/services/aigc/text-generation/generation"
MULTIMODAL_PATH = f"{API_PREFIX}/services/aigc/multimodal-generation/generation"
UPLOADS_PATH = f"{API_PREFIX}/uploads"
OSS_PATH = "/oss"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (timeout tests) breaks the pipe of a late answer


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any = None
    form: dict[str, bytes] = field(default_factory=dict)  # multipart uploads: field → value


def user_text(messages: list[dict[str, Any]]) -> str:
    """The user's text of a text- or multimodal-generation request."""
    content = messages[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def default_reply(messages: list[dict[str, Any]], model: str) -> str:
    return f"EXTENDED by {model}: {user_text(messages)}, golden hour, slow dolly-in"


class DashScopeStandIn:
    def __init__(self, api_key: str = "sk-test", mode: str = "ok", hang_s: float = 5.0,
                 reply: Callable[[list[dict[str, Any]], str], str] = default_reply) -> None:
        self.api_key, self.mode, self.hang_s, self.reply = api_key, mode, hang_s, reply
        self.requests: list[Recorded] = []
        self.uploads: dict[str, bytes] = {}  # object key → file bytes
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """What DASH_API_URL is set to."""
        return self.origin + API_PREFIX

    def __enter__(self) -> DashScopeStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def generation_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path in (TEXT_PATH, MULTIMODAL_PATH)]

    # ------------------------------------------------------------------ protocol
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: str, message: str) -> None:
                self._reply(status, {"code": code, "message": message, "request_id": str(uuid.uuid4())})

            def _record(self) -> Recorded:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rec = Recorded(self.command, url.path, parse_qs(url.query),
                               {k.lower(): v for k, v in self.headers.items()}, body)
                ctype = self.headers.get("Content-Type", "")
                if ctype.startswith("application/json"):
                    try:
                        rec.json = json.loads(body)
                    except ValueError:
                        pass
                elif ctype.startswith("multipart/form-data"):
                    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
                    for part in msg.iter_parts():
                        rec.form[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True)
                with server._lock:
                    server.requests.append(rec)
                return rec

            def _authorized(self, rec: Recorded) -> bool:
                if rec.headers.get("authorization") != f"Bearer {server.api_key}":
                    self._error(401, "InvalidApiKey", "Invalid API-key provided.")
                    return False
                return True

            def do_GET(self) -> None:
                rec = self._record()
                if rec.path != UPLOADS_PATH or rec.query.get("action") != ["getPolicy"]:
                    return self._error(404, "NotFound", f"no such API: GET {rec.path}")
                if not self._authorized(rec):
                    return None
                folder = f"dashscope-instant/{uuid.uuid4().hex}"
                self._reply(200, {"request_id": str(uuid.uuid4()), "data": {
                    "policy": "cG9saWN5", "signature": "c2lnbmF0dXJl", "upload_dir": folder,
                    "upload_host": server.origin + OSS_PATH, "expire_in_seconds": 300,
                    "max_file_size_mb": 100, "capacity_limit_mb": 999999999,
                    "oss_access_key_id": "LTAI-stand-in", "x_oss_object_acl": "private",
                    "x_oss_forbid_overwrite": "true"}})

            def do_POST(self) -> None:
                rec = self._record()
                if rec.path == OSS_PATH:
                    key, data = rec.form.get("key"), rec.form.get("file")
                    if not key or data is None or not rec.form.get("policy"):
                        return self._error(400, "InvalidArgument", "multipart form needs key, policy and file")
                    server.uploads[key.decode()] = data
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if rec.path not in (TEXT_PATH, MULTIMODAL_PATH):
                    return self._error(404, "NotFound", f"no such API: POST {rec.path}")
                if not self._authorized(rec):
                    return None
                problem = self._check(rec)
                if problem:
                    return self._error(400, "InvalidParameter", problem)
                if server.mode == "error":
                    return self._error(500, "InternalError", "An internal error has occured, please try again later.")
                if server.mode == "hang":
                    time.sleep(server.hang_s)
                body = rec.json
                text = server.reply(body["input"]["messages"], body["model"])
                content: Any = text if rec.path == TEXT_PATH else [{"text": text}]
                self._reply(200, {
                    "output": {"choices": [{"finish_reason": "stop",
                                            "message": {"role": "assistant", "content": content}}]},
                    "usage": {"input_tokens": 10, "output_tokens": len(text), "total_tokens": 10 + len(text)},
                    "request_id": str(uuid.uuid4())})

            def _check(self, rec: Recorded) -> str | None:
                body = rec.json
                if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                    return "body must be JSON with a model"
                messages = (body.get("input") or {}).get("messages")
                if not isinstance(messages, list) or not messages:
                    return "input.messages is required"
                if rec.path == MULTIMODAL_PATH:
                    for message in messages:
                        if not isinstance(message["content"], list):
                            return "multimodal message content must be a list"
                        for part in message["content"]:
                            url = part.get("image")
                            if url is None:
                                continue
                            if not url.startswith("oss://"):
                                return f"image {url} is not a URL this server can read"
                            if rec.headers.get("x-dashscope-ossresourceresolve") != "enable":
                                return "oss:// resources need X-DashScope-OssResourceResolve: enable"
                            if url.removeprefix("oss://") not in server.uploads:
                                return f"{url} was never uploaded"
                return None

        return Handler
