"""Prompt extension (spec §10): DashScope through the official SDK against a local stand-in that
speaks DashScope's wire protocol, local Qwen with tiny random models, fallbacks that are reported,
rank 0 computing and broadcasting, and the `generate` command using it."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from wan_core.prompt_extend import PromptExtensionError, PromptOutput, extend_prompt, make_expander
from wan_core.prompt_extend import system_prompts as sp
from wan_core.prompt_extend.dashscope_api import DashScopePromptExpander
from wan_core.testing.dashscope_server import MULTIMODAL_PATH, TEXT_PATH, UPLOADS_PATH, DashScopeStandIn
from wanspec.tasks import TASKS, Size

KEY = "sk-wanops-test"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DashScopeStandIn]:
    with DashScopeStandIn(api_key=KEY) as s:
        monkeypatch.setenv("DASH_API_KEY", KEY)
        monkeypatch.setenv("DASH_API_URL", s.base_url)
        yield s


def only_generation(server: DashScopeStandIn):
    (request,) = server.generation_requests()
    return request


# ------------------------------------------------------------------------------ system prompts


def test_system_prompt_choice_per_task_image_and_language() -> None:
    assert sp.choose("t2v-A14B", "zh", False, "a fox") == sp.T2V_ZH
    assert sp.choose("t2v-A14B", "en", False, "a fox") == sp.T2V_EN
    assert sp.choose("i2v-A14B", "en", True, "a fox") == sp.I2V_EN
    assert sp.choose("i2v-A14B", "zh", True, "") == sp.I2V_EMPTY_ZH
    assert sp.choose("ti2v-5B", "en", False, "a fox") == sp.T2V_EN
    assert sp.choose("ti2v-5B", "zh", True, "a fox") == sp.I2V_ZH
    assert len(set(sp.SYSTEM_PROMPTS.values())) == 6
    assert all("English" in sp.SYSTEM_PROMPTS[(kind, "en")] for kind in ("t2v", "i2v", "i2v_empty"))
    assert all("中文" in sp.SYSTEM_PROMPTS[(kind, "zh")] for kind in ("t2v", "i2v", "i2v_empty"))
    with pytest.raises(ValueError, match="languages: zh, en"):
        sp.system_prompt("t2v", "fr")


# ------------------------------------------------------------------------------ DashScope


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_dashscope_text_request_is_the_sdks(server: DashScopeStandIn, lang: str) -> None:
    out = extend_prompt("a red fox in the snow", method="dashscope", task="t2v-A14B", tar_lang=lang, seed=42)
    assert out == PromptOutput(status=True, prompt="EXTENDED by qwen-plus: a red fox in the snow, golden hour, slow dolly-in",
                               original="a red fox in the snow", method="dashscope", model="qwen-plus", seed=42,
                               system_prompt=sp.T2V_ZH if lang == "zh" else sp.T2V_EN)
    request = only_generation(server)
    assert (request.method, request.path) == ("POST", TEXT_PATH)
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["user-agent"].startswith("dashscope/")  # sent by the official SDK
    assert request.json == {
        "model": "qwen-plus",
        "input": {"messages": [{"role": "system", "content": sp.T2V_ZH if lang == "zh" else sp.T2V_EN},
                               {"role": "user", "content": "a red fox in the snow"}]},
        "parameters": {"seed": 42, "result_format": "message"},
    }


def test_dashscope_image_is_uploaded_and_referenced_as_the_sdk_does(server: DashScopeStandIn) -> None:
    server.reply = lambda messages, model: "the fox turns its head\nthe camera pushes in"
    image = Image.new("RGB", (1280, 720), (200, 80, 20))
    out = extend_prompt("the fox moves", method="dashscope", task="i2v-A14B", tar_lang="en", image=image, seed=7)
    assert out.status and out.model == "qwen-vl-max"
    assert out.prompt == "the fox turns its head\\nthe camera pushes in"  # newlines kept as the two characters \n
    policy, upload, generation = server.requests
    assert (policy.method, policy.path, policy.query) == ("GET", UPLOADS_PATH, {"action": ["getPolicy"], "model": ["qwen-vl-max"]})
    assert policy.headers["authorization"] == f"Bearer {KEY}"
    (key, data), = server.uploads.items()
    assert upload.form["key"].decode() == key and upload.form["policy"]
    uploaded = Image.open(io.BytesIO(data))
    assert (uploaded.format, uploaded.size) == ("PNG", (683, 384))  # area ≤ 512², aspect kept, rounded
    assert not Path(tempfile.gettempdir(), Path(key).name).exists()  # the temporary PNG is gone
    assert generation.path == MULTIMODAL_PATH
    assert generation.headers["x-dashscope-ossresourceresolve"] == "enable"
    assert generation.json == {
        "model": "qwen-vl-max",
        "input": {"messages": [{"role": "system", "content": [{"text": sp.I2V_EN}]},
                               {"role": "user", "content": [{"text": "the fox moves"}, {"image": f"oss://{key}"}]}]},
        "parameters": {"seed": 7, "result_format": "message"},
    }


def test_dashscope_model_flag_and_empty_i2v_prompt(server: DashScopeStandIn) -> None:
    out = extend_prompt("", method="dashscope", model="qwen-vl-plus", task="i2v-A14B", tar_lang="zh",
                        image=Image.new("RGB", (64, 64)))
    assert out.status and out.model == "qwen-vl-plus"
    request = only_generation(server)
    assert request.json["model"] == "qwen-vl-plus"
    assert request.json["input"]["messages"][0]["content"] == [{"text": sp.I2V_EMPTY_ZH}]
    # A small image is scaled to the same area (min(w·h, 512²)): unchanged.
    assert Image.open(io.BytesIO(next(iter(server.uploads.values())))).size == (64, 64)


@pytest.mark.parametrize("failure", ["error", "bad key", "timeout", "down"])
def test_dashscope_failures_fall_back_and_are_reported(server: DashScopeStandIn, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture, failure: str) -> None:
    expected = {"error": "HTTP 500 InternalError", "bad key": "HTTP 401 InvalidApiKey", "timeout": "imeout",
                "down": "Connection"}[failure]
    attempts = 4
    if failure == "error":
        server.mode = "error"
    elif failure == "bad key":
        monkeypatch.setenv("DASH_API_KEY", "sk-wrong")
    elif failure == "timeout":
        server.mode, server.hang_s, attempts = "hang", 3.0, 2
    else:
        monkeypatch.setenv("DASH_API_URL", "http://127.0.0.1:9/api/v1")  # nothing listens on the discard port
    out = extend_prompt("a red fox", method="dashscope", task="t2v-A14B", seed=1, attempts=attempts, timeout_s=0.5)
    assert out.fallback and not out.status
    assert out.prompt == out.original == "a red fox"
    assert expected in out.message, out.message
    if failure != "down":
        assert len(server.generation_requests()) == attempts  # upstream retries 4 times, no back-off
    caplog.clear()  # the SDK logs its own errors
    with caplog.at_level(logging.INFO, logger="wan_core.prompt_extend"):
        out.report()
    (record,) = [r for r in caplog.records if r.name == "wan_core.prompt_extend"]
    assert record.levelno == logging.WARNING and "falling back to the original prompt" in record.getMessage()
    assert record.prompt_extension["status"] == "fallback" and expected in record.prompt_extension["message"]


def test_dashscope_without_a_key_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASH_API_KEY", raising=False)
    with pytest.raises(PromptExtensionError, match="DASH_API_KEY is not set"):
        make_expander("dashscope")
    expander = DashScopePromptExpander(api_key="k", base_url="http://127.0.0.1:1/api/v1")
    assert (expander.model, expander.base_url) == ("qwen-plus", "http://127.0.0.1:1/api/v1")
    monkeypatch.delenv("DASH_API_URL", raising=False)
    assert DashScopePromptExpander(api_key="k", is_vl=True).base_url == "https://dashscope.aliyuncs.com/api/v1"


# ------------------------------------------------------------------------------ local Qwen


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wan_core.testing.tiny_qwen import write_tiny_qwen

    return write_tiny_qwen(tmp_path_factory.mktemp("qwen") / "Qwen2.5-tiny")


@pytest.fixture(scope="module")
def tiny_qwen_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wan_core.testing.tiny_qwen import write_tiny_qwen_vl

    return write_tiny_qwen_vl(tmp_path_factory.mktemp("qwen-vl") / "Qwen2.5-VL-tiny")


def test_local_qwen_generates_deterministically(tiny_qwen: Path) -> None:
    expander = make_expander("local_qwen", str(tiny_qwen), max_new_tokens=6)
    chats: list[str] = []
    template = expander.tokenizer.apply_chat_template
    expander.tokenizer.apply_chat_template = lambda *a, **k: chats.append(template(*a, **k)) or chats[-1]
    first = expander("a red fox", tar_lang="en", task="t2v-A14B")
    second = expander("a red fox", tar_lang="en", task="t2v-A14B")
    assert first.status and isinstance(first.prompt, str) and first.prompt
    assert first == second and first.model == str(tiny_qwen) and first.method == "local_qwen"
    assert chats[0] == f"<|im_start|>system\n{sp.T2V_EN}<|im_end|>\n<|im_start|>user\na red fox<|im_end|>\n<|im_start|>assistant\n"
    assert next(expander.llm.parameters()).device.type == "cpu"  # moved back after the call


def test_local_qwen_vl_reads_the_image(tiny_qwen_vl: Path) -> None:
    expander = make_expander("local_qwen", str(tiny_qwen_vl), is_vl=True, max_new_tokens=4)
    seen: list[torch.Tensor] = []
    generate = expander.llm.generate
    expander.llm.generate = lambda **kw: seen.append(kw["input_ids"]) or generate(**kw)
    out = expander("the fox runs", tar_lang="zh", task="i2v-A14B", image=Image.new("RGB", (320, 180), "white"))
    assert out.status and isinstance(out.prompt, str) and out.system_prompt == sp.I2V_ZH
    image_pad = expander.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (seen[0] == image_pad).sum() >= 256  # the processor's minimum of 256·28·28 pixels
    assert out == expander("the fox runs", tar_lang="zh", task="i2v-A14B", image=Image.new("RGB", (320, 180), "white"))


def test_local_qwen_model_that_does_not_load_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(PromptExtensionError, match="does not load"):
        make_expander("local_qwen", str(tmp_path / "absent"))


def test_local_qwen_failure_during_the_call_falls_back(tiny_qwen: Path) -> None:
    expander = make_expander("local_qwen", str(tiny_qwen), max_new_tokens=2)

    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory")

    expander.llm.generate = broken
    out = expander("a fox", task="t2v-A14B")
    assert out.fallback and out.prompt == "a fox" and out.message == "RuntimeError: CUDA out of memory"


# ------------------------------------------------------------------------------ rank 0 + broadcast


def _rank(rank: int, init: str, base_url: str, results: str, key: str) -> None:
    import torch.distributed as dist

    from wan_core.parallel.mesh import ParallelLayout

    os.environ["DASH_API_URL"] = base_url
    if rank == 0 and key:  # only rank 0 has the key: the others must not build or call anything
        os.environ["DASH_API_KEY"] = key
    else:
        os.environ.pop("DASH_API_KEY", None)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    layout = ParallelLayout(world_size=2, rank=rank, local_rank=rank, ulysses=2)
    try:
        out = extend_prompt("a red fox", method="dashscope", task="t2v-A14B", tar_lang="en", seed=3, layout=layout).to_dict()
    except PromptExtensionError as e:
        out = {"error": str(e)}
    Path(results, f"{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.mark.parametrize("key", [KEY, ""])
def test_rank_0_extends_and_every_rank_gets_the_result(server: DashScopeStandIn, tmp_path: Path, key: str) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(f"file://{tmp_path / 'rdzv'}", server.base_url, str(tmp_path), key), nprocs=2)
    zero, one = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert zero == one
    if key:
        assert zero["status"] and zero["prompt"].startswith("EXTENDED by qwen-plus: a red fox")
        assert len(server.generation_requests()) == 1  # only rank 0 called
    else:  # rank 0's setup error reaches every rank instead of leaving them waiting
        assert "DASH_API_KEY is not set" in zero["error"]
        assert server.requests == []


# ------------------------------------------------------------------------------ the generate command


@pytest.fixture
def tiny_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS, "ti2v-5B", dataclasses.replace(TASKS["ti2v-5B"], sizes=(*TASKS["ti2v-5B"].sizes, Size(64, 32))))


@pytest.fixture
def encoded_prompts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prompts the pipeline was asked to generate from."""
    from wan_core.pipelines import TextImageToVideo

    seen: list[str] = []
    original = TextImageToVideo.generate

    def spy(self, input_prompt, *args, **kwargs):
        seen.append(input_prompt)
        return original(self, input_prompt, *args, **kwargs)

    monkeypatch.setattr(TextImageToVideo, "generate", spy)
    return seen


def _cli(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["--task", "ti2v-5B", "--size", "64*32", "--ckpt_dir", str(ckpt), "--frame_num", "1", "--sample_steps", "1",
            "--base_seed", "9", "--prompt", "a red fox", "--save_file", str(out), *extra]


@pytest.mark.usefixtures("tiny_sizes")
def test_cli_extends_with_dashscope_then_generates(server: DashScopeStandIn, tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                   encoded_prompts: list[str], caplog: pytest.LogCaptureFixture) -> None:
    from wan_core.cli import main

    out = tmp_path / "fox.mp4"
    with caplog.at_level(logging.INFO):
        assert main(_cli(tiny_ckpts["ti2v-5B"], out, "--use_prompt_extend", "--prompt_extend_method", "dashscope",
                         "--prompt_extend_target_lang", "en")) == 0
    assert out.stat().st_size > 0
    request = only_generation(server)
    assert request.json["model"] == "qwen-plus" and request.json["parameters"]["seed"] == 9
    assert request.json["input"]["messages"][0]["content"] == sp.T2V_EN
    extended = "EXTENDED by qwen-plus: a red fox, golden hour, slow dolly-in"
    assert encoded_prompts == [extended]
    assert f"extended prompt (dashscope, qwen-plus): {extended}" in caplog.text


@pytest.mark.usefixtures("tiny_sizes")
def test_cli_falls_back_to_the_prompt_with_a_warning(server: DashScopeStandIn, tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                     encoded_prompts: list[str], caplog: pytest.LogCaptureFixture) -> None:
    from wan_core.cli import main

    server.mode = "error"
    with caplog.at_level(logging.INFO):
        assert main(_cli(tiny_ckpts["ti2v-5B"], tmp_path / "fox.mp4", "--use_prompt_extend",
                         "--prompt_extend_method", "dashscope")) == 0
    assert encoded_prompts == ["a red fox"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "wan_core.generate"]
    assert "prompt extension failed (dashscope, qwen-plus): DashScopeError: HTTP 500 InternalError" in warning.getMessage()
    assert "falling back to the original prompt" in warning.getMessage()


@pytest.mark.usefixtures("tiny_sizes")
def test_cli_local_qwen_with_an_image(tiny_qwen_vl: Path, tiny_ckpts: dict[str, Path], tmp_path: Path,
                                      encoded_prompts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from wan_core.cli import main
    from wan_core.prompt_extend import local_qwen

    monkeypatch.setattr(local_qwen, "MAX_NEW_TOKENS", 4)  # upstream's 512 tokens of a random model: slow, no better
    image = tmp_path / "first.png"
    Image.new("RGB", (64, 32), "white").save(image)
    assert main(_cli(tiny_ckpts["ti2v-5B"], tmp_path / "fox.mp4", "--image", str(image), "--use_prompt_extend",
                     "--prompt_extend_model", str(tiny_qwen_vl))) == 0
    (prompt,) = encoded_prompts
    assert isinstance(prompt, str) and prompt != "a red fox"


def test_cli_refuses_dashscope_without_a_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from wan_core.cli import main

    monkeypatch.delenv("DASH_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_dir", "/ckpt", "--use_prompt_extend", "--prompt_extend_method", "dashscope"])
    assert exit_info.value.code == 2
    assert "--prompt_extend_method dashscope: DASH_API_KEY is not set" in capsys.readouterr().err


def test_cli_local_qwen_model_that_does_not_load_exits_1(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from wan_core.cli import main

    argv = ["--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", str(tiny_ckpts["ti2v-5B"]), "--use_prompt_extend",
            "--prompt_extend_model", str(tmp_path / "absent")]
    assert main(argv) == 1
    assert "--use_prompt_extend: prompt extension model" in capsys.readouterr().err

