"""DashScope backend (`--prompt_extend_method dashscope`, spec §10.1), through the official SDK.

The `dashscope` package sends the requests, so the wire protocol is the SDK's own: text tasks
`POST {base}/services/aigc/text-generation/generation`; image tasks first upload the image
(`GET {base}/uploads?action=getPolicy`, a multipart POST to the policy's host) and then
`POST {base}/services/aigc/multimodal-generation/generation` with the `oss://` URL. The base URL
comes from `DASH_API_URL` (default the Beijing endpoint) and is set on the SDK's module-wide
`dashscope.base_http_api_url`, as upstream does: the SDK's upload step reads only that global.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from wan_core.prompt_extend.base import PromptExpander, PromptExtensionError

if TYPE_CHECKING:
    from PIL import Image

KEY_ENV = "DASH_API_KEY"
URL_ENV = "DASH_API_URL"
DEFAULT_URL = "https://dashscope.aliyuncs.com/api/v1"
DEFAULT_TEXT_MODEL = "qwen-plus"
DEFAULT_VL_MODEL = "qwen-vl-max"
ATTEMPTS = 4  # upstream's retry_times, no back-off
MAX_IMAGE_SIZE = 512  # the image is resized to an area of at most 512·512 before upload
DEFAULT_TIMEOUT_S = 120.0  # per request (the SDK's own default is 300 s)

_GLOBAL_URL = threading.Lock()  # the SDK's base URL is module state


class DashScopeError(RuntimeError):
    """A non-200 answer: HTTP status, DashScope's error code and message."""


def _resize_for_upload(image: Image.Image, max_size: int = MAX_IMAGE_SIZE) -> Image.Image:
    """Upstream: area min(w·h, 512²), aspect kept, each side rounded (PIL's default filter)."""
    w, h = image.size
    area = min(w * h, max_size**2)
    aspect = h / w
    return image.resize((round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))))


class DashScopePromptExpander(PromptExpander):
    method = "dashscope"

    def __init__(self, model: str | None = None, *, is_vl: bool = False, api_key: str | None = None,
                 base_url: str | None = None, attempts: int = ATTEMPTS, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        api_key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        if not api_key:
            raise PromptExtensionError(f"{KEY_ENV} is not set: put your DashScope API key in it, or use "
                                       "--prompt_extend_method local_qwen")
        try:
            import dashscope  # noqa: F401
        except ImportError as e:
            raise PromptExtensionError("the dashscope package is not installed: pip install dashscope") from e
        super().__init__(model or (DEFAULT_VL_MODEL if is_vl else DEFAULT_TEXT_MODEL))
        self.is_vl = is_vl
        self.api_key = api_key
        self.base_url = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
        self.attempts = attempts
        self.timeout_s = timeout_s

    def extend(self, prompt: str, system_prompt: str, image: Image.Image | None, seed: int) -> str:
        problem: Exception | None = None
        for _ in range(self.attempts):
            try:
                if image is None:
                    return self._text(prompt, system_prompt, seed)
                return self._image(prompt, system_prompt, image, seed)
            except Exception as e:  # noqa: BLE001 — upstream retries on any failure
                problem = e
        assert problem is not None
        raise problem

    def _call(self, api, messages: list[dict], seed: int):
        import dashscope

        with _GLOBAL_URL:
            dashscope.base_http_api_url = self.base_url
            response = api.call(self.model, messages=messages, seed=seed, result_format="message",
                                api_key=self.api_key, request_timeout=self.timeout_s)
        if response.status_code != HTTPStatus.OK:
            raise DashScopeError(f"HTTP {response.status_code} {response.code}: {response.message} "
                                 f"(request {response.request_id})")
        return response.output.choices[0]["message"]["content"]

    def _text(self, prompt: str, system_prompt: str, seed: int) -> str:
        import dashscope

        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
        return self._call(dashscope.Generation, messages, seed)

    def _image(self, prompt: str, system_prompt: str, image: Image.Image, seed: int) -> str:
        import dashscope

        # A random file name, as upstream: it becomes the object's name under the upload folder.
        fd, name = tempfile.mkstemp(suffix=".png")
        os.close(fd)
        path = Path(name)
        try:
            _resize_for_upload(image.convert("RGB")).save(path)
            messages = [
                {"role": "system", "content": [{"text": system_prompt}]},
                {"role": "user", "content": [{"text": prompt}, {"image": f"file://{path}"}]},
            ]
            content = self._call(dashscope.MultiModalConversation, messages, seed)
        finally:
            path.unlink(missing_ok=True)
        return content[0]["text"].replace("\n", "\\n")  # upstream keeps one line
