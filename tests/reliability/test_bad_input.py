"""The bad-input catalogue (tests/reliability/bad_input_cases.py) against the real control plane:
every row is refused by its layer with a message naming the field or reason and what to fix,
none is retried, none reaches a shell (the canary file never appears), none leaves an object in
the store.

Admission rows go to the API server (dry-run create, strict field validation). Operator rows are
created and given one pre-flight pass of the real reconcile code. Runner rows are created, their
runner config rendered as the operator renders it, and `python -m runner` runs against the real
API server and S3 store with a tiny official-layout checkpoint; all runner rows run at once, since
each one's time is the interpreter loading torch."""

from __future__ import annotations

import copy
import http.server
import io
import json
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from PIL import Image

from localcluster import certs
from tests.reliability.bad_input_cases import (
    ADMISSION,
    CANARY,
    CASES,
    OPERATOR,
    RUNNER,
    Case,
)
from tests.reliability.operator_proc import prepare_namespace, remove_namespace
from tests.runner.runner_cases import Run
from wanops_operator.config import OperatorConfig
from wanops_operator.reconcile import Refused, reconcile
from wanops_operator.render import render
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

BY_LAYER = {
    layer: [c for c in CASES if c.layer == layer] for layer in (ADMISSION, OPERATOR, RUNNER)
}
RUN_TIMEOUT_S = 300  # nine interpreters importing torch at once on a shared 2-core machine


def _body(case: Case, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VideoGeneration",
        "metadata": {"name": case.name_},
        "spec": spec if spec is not None else case.spec,
    }


@pytest.fixture(autouse=True)
def no_canary() -> Iterator[None]:
    assert not CANARY.exists()
    yield
    assert not CANARY.exists(), f"a layer ran the prompt through a shell: {CANARY} exists"


def test_catalogue_has_at_least_30_distinct_cases_in_every_layer() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert all(BY_LAYER.values())


@pytest.mark.parametrize("case", BY_LAYER[ADMISSION], ids=lambda c: c.name)
def test_admission_refuses_naming_the_field(kube, crd, namespace, case: Case) -> None:
    api = client.CustomObjectsApi(kube)
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _body(case),
            field_validation="Strict", dry_run="All",
        )  # fmt: skip
    assert refused.value.status in (400, 422), refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert case.expect in message and case.text in message, message


@pytest.fixture
def operator_ns(kube, crd, tmp_path) -> Iterator[str]:
    """A namespace as the chart sets it up (runner account, store Secret, claim), plus the
    half-filled Secrets the operator rows name."""
    name = prepare_namespace(kube, tmp_path)
    core = client.CoreV1Api(kube)
    for secret, data in (("half", {contract.ACCESS_KEY_ENV: "k"}), ("dash", {"other": "x"})):
        core.create_namespaced_secret(name, {"metadata": {"name": secret}, "stringData": data})
    yield name
    remove_namespace(kube, name)


def test_operator_preflight_fails_without_a_job(kube, cluster, operator_ns: str) -> None:
    api, batch = client.CustomObjectsApi(kube), client.BatchV1Api(kube)
    core = client.CoreV1Api(kube)
    config = OperatorConfig(store_endpoint=cluster.s3_endpoint, store_bucket="videos")
    for i, case in enumerate(BY_LAYER[OPERATOR]):
        name = f"case-{i}"
        api.create_namespaced_custom_object(
            GROUP, VERSION, operator_ns, PLURAL, {**_body(case), "metadata": {"name": name}}
        )
        with pytest.raises(Refused):
            reconcile(kube, operator_ns, name, config=config)
        # A second pass (resync, a restarted operator) neither retries nor changes the verdict.
        try:
            reconcile(kube, operator_ns, name, config=config)
        except Refused:
            pass
        status = api.get_namespaced_custom_object(GROUP, VERSION, operator_ns, PLURAL, name)[
            "status"
        ]
        assert status["phase"] == "Failed", (case.name, status)
        assert status["failure"]["reason"] == case.expect, (case.name, status["failure"])
        assert case.text in status["failure"]["message"], (case.name, status["failure"])
        stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
        assert (stalled["status"], stalled["reason"]) == ("True", case.expect), case.name
        selector = f"wanops.io/videogeneration={name}"
        assert not batch.list_namespaced_job(operator_ns, label_selector=selector).items
        events = core.list_namespaced_event(
            operator_ns, field_selector=f"involvedObject.name={name}"
        ).items
        assert any(e.type == "Warning" and e.reason == case.expect for e in events), case.name


# ---- runner rows -------------------------------------------------------------------------------


class _Images(http.server.BaseHTTPRequestHandler):
    """An HTTPS image host: a web page where an image should be, and a 1 GiB 'image' whose
    body is never sent (the runner must refuse it by its Content-Length)."""

    def do_GET(self) -> None:
        if self.path == "/huge.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            return
        body = b"<html><body>a fox</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def https_host(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """(host:port, the CA that signed its certificate, another CA) for the runner's SSL_CERT_FILE."""
    pki = certs.generate(tmp_path_factory.mktemp("pki"))  # serving cert for 127.0.0.1
    other = certs.generate(tmp_path_factory.mktemp("other-pki"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.serving_cert, pki.serving_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", pki.ca_cert, other.ca_cert
    server.shutdown()


@pytest.fixture(scope="module")
def tiny_ti2v(tmp_path_factory) -> Path:
    from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint("ti2v-5B", tmp_path_factory.mktemp("claim") / "Wan2.2-TI2V-5B")


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _put(s3, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(bucket, key, io.BytesIO(data), len(data))


def _fill(value: Any, names: dict[str, str]) -> Any:
    """The case's spec with {bucket} and {https} filled in."""
    if isinstance(value, str):
        for name, filled in names.items():
            value = value.replace("{" + name + "}", filled)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def test_runner_preflight_refuses_with_exit_42_and_leaves_nothing_in_the_store(
    kube, cluster, crd, namespace, bucket, s3, tiny_ti2v, https_host, tmp_path
) -> None:
    host, ca, other_ca = https_host
    inputs = {
        "inputs/huge.png": _png(64, 64) + b"\0" * (32 << 20),  # a valid start, then too much
        "inputs/bomb.png": _png(8001, 8001, "1"),  # 64 016 001 pixels in a few kB
    }
    for key, data in inputs.items():
        _put(s3, bucket, key, data)
    truncated = tmp_path / "truncated" / tiny_ti2v.name
    shutil.copytree(tiny_ti2v, truncated)
    shard = min(truncated.glob("diffusion_pytorch_model-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    names = {"bucket": bucket, "https": host}
    started = []
    for case in BY_LAYER[RUNNER]:
        ckpt = truncated if case.prepare == "truncated shard" else tiny_ti2v
        run = Run(kube, cluster, namespace, bucket, ckpt, tmp_path, _fill(case.spec, names))
        run.termination.touch()
        extra = {
            "SSL_CERT_FILE": str(other_ca if case.prepare == "untrusted CA" else ca),
            "WANOPS_TERMINATION_MESSAGE_PATH": str(run.termination),
        }
        if case.prepare == "empty secret key":
            extra[contract.SECRET_KEY_ENV] = ""  # the Secret has the key, with an empty value
        started.append((case, run, run.start(**extra)))

    failures = []
    for case, run, proc in started:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
        reason, message = contract.parse_termination_message(run.termination.read_text())
        if (proc.returncode, reason) != (contract.EXIT_INVALID_INPUT, case.expect) or (
            case.text not in message
        ):
            failures.append(
                f"{case.name}: exit {proc.returncode}, {reason}: {message}\n{out[-2000:]}"
            )
    assert not failures, "\n\n".join(failures)

    # Nothing written: no video, no log, no work objects; the missing bucket was not created.
    assert sorted(o.object_name for o in s3.list_objects(bucket, recursive=True)) == sorted(inputs)
    assert not s3.bucket_exists(f"no-such-bucket-{bucket}")
    # Exit 42 is what the rendered Job fails at once on, without a retry (see render.py).
    vg = run.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run.name)
    job = render(copy.deepcopy(vg), config=OperatorConfig(store_bucket=bucket))[-1]["spec"]
    assert job["backoffLimit"] == 0
    (fail_job,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_job["onExitCodes"]["values"] == [contract.EXIT_INVALID_INPUT]
