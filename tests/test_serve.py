"""`adapt serve`: the real uvicorn server on a free 127.0.0.1 port, queried over HTTP (httpx, and the openai
client), for a tiny saved classification run and a tiny saved chat (clm) run; answers equal `adapt predict`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_tiny_llama
from typer.testing import CliRunner

from adapt.cli import app
from adapt.serve import Limits, load_service, serve_in_thread as running

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

TEXTS = ["great film", "a dull and tedious story", "brilliant acting, sharp writing and a fine score"]
PROMPTS = ["Add 3 and 3.", "Add 10 and 10.", "What is the sum of 7 and 7?"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def adapt_predict(run: Path, inputs: list[str], *sets: str) -> list[dict]:
    """What `adapt predict --model RUN INPUTS...` prints, one record per input."""
    args = ["predict", "--model", str(run), *inputs]
    for value in sets:
        args += ["--set", value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def classifier(tiny_run):
    run, _ = tiny_run
    service = load_service(str(run), limits=Limits(max_body_bytes=20_000, max_inputs=8, max_batch=16))
    with running(service) as url:
        yield run, url


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A 2-step clm-instruct run (chat template on) of a tiny random Llama with SmolLM2's tokenizer."""
    from adapt.recipe import resolve_recipe
    from adapt.train import finetune

    root = tmp_path_factory.mktemp("serve-chat")
    build_tiny_llama(root / "base")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Add {i} and {i}.", "completion": f"The sum is {2 * i}."}) + "\n"
                             for i in range(24)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(root / "cache"))
        finetune(resolve_recipe("clm-instruct", [
            ("model", str(root / "base")), ("data.train", str(pairs)), ("train.max_steps", 2),
            ("train.batch_size", 4), ("train.lr", 1e-3), ("train.max_length", 128), ("task_options.max_new_tokens", 8),
            ("output_dir", str(root / "run")), ("tracking", [])]))
    return root / "run"


@pytest.fixture(scope="module")
def chat(chat_run):
    service = load_service(str(chat_run), limits=Limits(max_new_tokens=32, max_prompt_tokens=64))
    with running(service) as url:
        yield chat_run, url, service.name


# ---- encoder task: /predict ---------------------------------------------------------------------------
def test_predict_answers_equal_adapt_predict(classifier):
    run, url = classifier
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "ok", "model": run.name, "task": "classification"}
    response = httpx.post(f"{url}/predict", json={"inputs": TEXTS})
    assert response.status_code == 200
    assert response.json() == {"model": run.name, "predictions": adapt_predict(run, TEXTS)}
    # a JSON object input is what a JSON Lines line of `adapt predict --file` gives
    response = httpx.post(f"{url}/predict", json={"inputs": [{"text": TEXTS[0]}]})
    assert response.json()["predictions"] == adapt_predict(run, [json.dumps({"text": TEXTS[0]})])


def test_bad_requests_get_4xx_with_a_message(classifier):
    _, url = classifier

    def error(response, status):
        assert response.status_code == status, response.text
        return response.json()["error"]["message"]

    assert "malformed JSON" in error(httpx.post(f"{url}/predict", content=b'{"inputs": ["a",',
                                                headers={"content-type": "application/json"}), 400)
    assert "inputs: Field required" in error(httpx.post(f"{url}/predict", json={"texts": ["a"]}), 422)
    assert "inputs: List should have at least 1 item" in error(httpx.post(f"{url}/predict", json={"inputs": []}), 422)
    assert "inputs[1] is empty" in error(httpx.post(f"{url}/predict", json={"inputs": ["good", "  "]}), 422)
    assert "9 inputs in one request, over this server's limit of 8" in error(
        httpx.post(f"{url}/predict", json={"inputs": ["good"] * 9}), 413)
    assert "over this server's limit of 20,000 bytes" in error(
        httpx.post(f"{url}/predict", json={"inputs": ["word " * 5000]}), 413)
    # the same bound without a Content-Length (a chunked body), counted as it arrives
    chunks = (b'{"inputs": ["' + b"x" * 8000, b"x" * 8000, b"x" * 8000 + b'"]}')
    assert "20,000 bytes" in error(httpx.post(f"{url}/predict", content=iter(chunks)), 413)
    message = error(httpx.post(f"{url}/v1/chat/completions",
                               json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}), 404)
    assert "is a classification model, not a language model; POST /predict" in message


def test_fifty_concurrent_requests_are_all_answered(classifier):
    run, url = classifier
    expected = {record["input"]["text"]: record for record in adapt_predict(run, TEXTS)}

    async def fire():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            requests = [client.post("/predict", json={"inputs": [TEXTS[i % 3]]}) for i in range(50)]
            return await asyncio.gather(*requests)

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 50
    for i, response in enumerate(responses):
        assert response.json()["predictions"] == [expected[TEXTS[i % 3]]]


def test_serve_command_refuses_a_busy_port_and_a_missing_folder(tiny_run, tmp_path):
    run, _ = tiny_run
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--model", str(run), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "choose another --port" in result.stderr
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nothing"), "--port", str(free_port())])
    assert result.exit_code == 2
    assert "is not a model folder (no config.json)" in result.stderr and "Traceback" not in result.output


def test_missing_serve_extra_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.stderr == "error: adapt serve needs fastapi: pip install 'adapt[serve]' (or pip install fastapi uvicorn)\n"


def test_serve_command_runs_the_server_on_localhost(tiny_run):
    run, _ = tiny_run
    port = free_port()
    command = [sys.executable, "-m", "adapt", "serve", "--model", str(run), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "ADAPT_NO_CACHE": "1"})
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.time() < deadline, "adapt serve did not answer"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert response.json()["task"] == "classification"
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": TEXTS}).json()
        assert answer["predictions"] == adapt_predict(run, TEXTS)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}" in stderr


# ---- causal LM: OpenAI-compatible endpoints ---------------------------------------------------------------
def test_chat_and_completions_equal_adapt_predict(chat):
    run, url, name = chat
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == name
    expected = [record["generated_text"] for record in adapt_predict(run, PROMPTS)]  # the run renders its chat template
    assert all(expected)  # real generated text to compare, not empty strings
    for prompt, text in zip(PROMPTS, expected):
        body = {"model": name, "messages": [{"role": "user", "content": prompt}]}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
        assert answer["object"] == "chat.completion" and answer["model"] == name
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": text}
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        assert answer["usage"]["completion_tokens"] <= 8  # the run's task_options.max_new_tokens
    # /v1/completions takes the prompt as raw text: adapt predict without the chat template gives the same
    plain = [record["generated_text"] for record in adapt_predict(run, PROMPTS, "task_options.chat_template=false")]
    answer = httpx.post(f"{url}/v1/completions", json={"model": name, "prompt": PROMPTS}, timeout=60).json()
    assert [choice["text"] for choice in answer["choices"]] == plain
    assert [choice["index"] for choice in answer["choices"]] == [0, 1, 2]
    # sampling settings from the request replace the run's greedy decoding; max_tokens bounds the length
    body = {"model": name, "prompt": PROMPTS[0], "temperature": 0.8, "top_p": 0.9, "max_tokens": 4}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    assert 1 <= answer["usage"]["completion_tokens"] <= 4 and answer["choices"][0]["finish_reason"] in ("stop", "length")


def test_streaming_sends_chunks_then_done(chat):
    _, url, name = chat

    def events(path, body):
        with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
        return [json.loads(line[6:]) for line in lines[:-1]]

    body = {"model": name, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 12}
    whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    chunks = events("/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len(chunks) >= 3  # the role, at least one piece, the finish reason
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]

    body = {"model": name, "prompt": PROMPTS[1], "max_tokens": 12}
    whole = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]
    chunks = events("/v1/completions", body)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]


def test_openai_errors_for_unknown_model_and_bounds(chat):
    _, url, name = chat
    response = httpx.post(f"{url}/v1/chat/completions",
                          json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404
    assert response.json() == {"error": {
        "message": f"The model 'gpt-4o' does not exist; this server serves '{name}' (GET /v1/models)",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    response = httpx.post(f"{url}/v1/completions", json={"model": name, "prompt": "word " * 100})
    assert response.status_code == 422 and response.json()["error"]["code"] == "context_length_exceeded"
    response = httpx.post(f"{url}/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 33})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "max_tokens 33 is over this server's limit of 32"
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": name, "messages": [{"role": "robot",
                                                                                            "content": "hi"}]})
    assert response.status_code == 422 and response.json()["error"]["param"] == "messages.0.role"
    response = httpx.post(f"{url}/v1/completions", content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "malformed JSON" in response.json()["error"]["message"]


def test_prompt_and_max_tokens_must_fit_the_models_positions(chat_run):
    service = load_service(str(chat_run))  # default limits: only the model's 256 positions bound these
    prompt = "word " * 100
    size = len(service.task.tokenizer(prompt)["input_ids"])
    with running(service) as url:
        body = {"model": service.name, "prompt": prompt, "max_tokens": 256 - size + 1}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 422 and response.json()["error"] == {
            "message": f"the prompt's {size} tokens and max_tokens {256 - size + 1} are over the model's 256 "
                       "positions; shorten the prompt or lower max_tokens",
            "type": "invalid_request_error", "param": "prompt", "code": "context_length_exceeded"}
        response = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 4}, timeout=60)
        assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == size


def test_openai_client_talks_to_the_server(chat):
    openai = pytest.importorskip("openai")
    run, url, name = chat
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [model.id for model in client.models.list()] == [name]
    expected = adapt_predict(run, PROMPTS[:1])[0]["generated_text"]
    answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPTS[0]}])
    assert answer.choices[0].message.content == expected
    stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPTS[0]}],
                                            stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == expected
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hi")
