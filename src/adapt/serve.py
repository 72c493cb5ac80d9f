"""`adapt serve`: a trained run folder behind an HTTP API (FastAPI on uvicorn).

Endpoints:
- `GET /health`: status, served model name and task.
- `POST /predict` {"inputs": [text or JSON object, ...]}: exactly the records `adapt predict` prints for the same
  inputs (the same code path: `adapt.runner.predict_stream` and `finite_records`), as {"model", "predictions"}.
- causal LMs (task `clm` and the tasks built on it) also get the OpenAI-compatible `GET /v1/models`, `POST /v1/completions` and
  `POST /v1/chat/completions` (`stream: true` sends server-sent events, `data: {chunk}` lines ending with
  `data: [DONE]`, as the OpenAI API does). A request's `model` must be the served name (else 404 with an
  OpenAI-style error body). Unset `max_tokens` / `temperature` / `top_p` take the run's `task_options`, so a
  request without them generates what `adapt predict` generates.

All model calls run on one worker thread, so the model is never used by two requests at once; concurrent
`/predict` requests are merged into micro-batches of at most `Limits.max_batch` inputs. Request bodies, inputs
per request, prompt and generated tokens are bounded (`Limits`): over a bound is 413 or 422 with a message;
malformed JSON is 400. Errors have the OpenAI body {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from adapt.errors import AdaptError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Bytes of a request body; inputs of one /predict request; prompts of one
    /v1/completions request; messages of one chat; tokens a request may generate (`max_tokens`); prompt tokens;
    inputs per model call when concurrent /predict requests are merged (the micro-batch)."""

    max_body_bytes: int = 1_000_000
    max_inputs: int = 64
    max_messages: int = 64
    max_new_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_batch: int = 64


def check_installed() -> None:
    """Raises AdaptError (one line, the fix) when the `serve` extra (fastapi, uvicorn) is missing."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise AdaptError(f"adapt serve needs {' and '.join(missing)}: pip install 'adapt[serve]' "
                         "(or pip install fastapi uvicorn)")


def check_address(host: str, port: int) -> None:
    """Refuse, before the model loads, an address this process cannot listen on (in use, not local, no rights).

    Raises:
        AdaptError: naming --host/--port and the fix."""
    if not 0 < port < 65536:
        raise AdaptError(f"--port {port}: give a TCP port between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise AdaptError(f"--host {host}: not an address of this machine ({err.strerror}); "
                         "use 127.0.0.1 (the default) or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise AdaptError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port "
                             "(or stop what uses it)") from None


class ApiError(Exception):
    """An error answered to the client: HTTP `status` with the OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class _PredictJob:
    inputs: list[str]
    future: concurrent.futures.Future


class ModelWorker:
    """The one thread that calls the model. `predict` jobs waiting together are merged into micro-batches of at
    most `max_batch` inputs (each request still gets exactly its own records); `call` runs any other function
    (generation) alone, in arrival order."""

    def __init__(self, predict: Callable[[list[str]], list[dict]], max_batch: int):
        self._predict, self.max_batch = predict, max_batch
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="adapt-serve-model", daemon=True)
        self._thread.start()

    def predict(self, inputs: list[str]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(_PredictJob(inputs, future))
        return future

    def call(self, function: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((function, future))
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        carry = None
        while True:
            job = carry if carry is not None else self._jobs.get()
            carry = None
            if job is None:
                return
            if isinstance(job, _PredictJob):
                batch, size = [job], len(job.inputs)
                while size < self.max_batch:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, _PredictJob) or size + len(nxt.inputs) > self.max_batch:
                        carry = nxt
                        break
                    batch.append(nxt)
                    size += len(nxt.inputs)
                self._run_predict(batch)
            else:
                function, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(function())
                    except BaseException as err:  # handed to the request that asked
                        future.set_exception(err)

    def _run_predict(self, batch: list[_PredictJob]) -> None:
        try:
            records = self._predict([text for job in batch for text in job.inputs])
        except BaseException as err:
            if len(batch) == 1:
                batch[0].future.set_exception(err)
                return
            for job in batch:  # say which request failed: each alone
                self._run_predict([job])
            return
        start = 0
        for job in batch:
            job.future.set_result(records[start:start + len(job.inputs)])
            start += len(job.inputs)


class Service:
    """A loaded run: its task and model, the served name, the limits, and the worker that runs the model."""

    def __init__(self, task, model, name: str, limits: Limits = Limits(), batch_size: int = 64):
        from adapt.train import make_accelerator

        self.task, self.name, self.limits, self.batch_size = task, name, limits, batch_size
        self.accelerator = make_accelerator()  # one for every request (`predict_stream`)
        self.model = model.to(self.accelerator.device).eval()
        self.created = int(time.time())
        self.worker = ModelWorker(self._predict, limits.max_batch)

    @property
    def generates_text(self) -> bool:
        """True for causal LMs (the clm task and the tasks built on it, e.g. chat, dpo): the OpenAI endpoints
        serve them."""
        from adapt.tasks.causal_lm import CausalLM

        return isinstance(self.task, CausalLM)

    def _predict(self, inputs: list[str]) -> list[dict]:
        """`adapt predict`'s records for `inputs` (same functions, same order)."""
        from adapt.runner import finite_records, predict_stream

        records = predict_stream(self.task, self.model, inputs, self.batch_size, accelerator=self.accelerator)
        return list(finite_records(records, self.name))

    # ---- generation (causal LMs) -------------------------------------------------------------------
    def generation_settings(self, max_tokens: int | None, temperature: float | None, top_p: float | None) -> dict:
        """`model.generate` keyword arguments: the run's `task_options` (what `adapt predict` uses), with the
        request's values where given (`CausalLM.generation_kwargs`).

        Raises:
            ApiError: 422 for a `max_tokens` over `Limits.max_new_tokens`."""
        settings = self.task.generation_kwargs(max_tokens, temperature, top_p)
        if settings["max_new_tokens"] > self.limits.max_new_tokens:
            raise ApiError(422, f"max_tokens {settings['max_new_tokens']} is over this server's limit of "
                                f"{self.limits.max_new_tokens}", "max_tokens")
        return settings

    def prompt_ids(self, text: str, chat: bool, max_new_tokens: int) -> list[int]:
        """Token ids of a prompt, as `adapt predict` tokenizes one (`CausalLM.prompt_token_ids`): a rendered chat
        template brings its own special tokens, plain text gets the tokenizer's usual ones (BOS).

        Raises:
            ApiError: 422 for a prompt over `Limits.max_prompt_tokens`, or one that with `max_new_tokens`
                generated tokens would not fit the model's positions (`max_position_embeddings`)."""
        ids = self.task.tokenizer(text, add_special_tokens=not chat)["input_ids"]
        param = "messages" if chat else "prompt"
        if len(ids) > self.limits.max_prompt_tokens:
            raise ApiError(422, f"the prompt has {len(ids)} tokens, over this server's limit of "
                                f"{self.limits.max_prompt_tokens}", param, "context_length_exceeded")
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions and len(ids) + max_new_tokens > positions:
            raise ApiError(422, f"the prompt's {len(ids)} tokens and max_tokens {max_new_tokens} are over the "
                                f"model's {positions} positions; shorten the prompt or lower max_tokens", param,
                           "context_length_exceeded")
        return ids

    def render_chat(self, messages: list[dict]) -> str:
        """The chat rendered with the tokenizer's chat template, ending with the assistant's turn
        (`adapt.conversation.render`).

        Raises:
            ApiError: 422 when the tokenizer has no chat template, or its template refuses the messages."""
        from adapt.conversation import ConversationError, render

        if not self.task.tokenizer.chat_template:
            raise ApiError(422, f"model '{self.name}' has no chat template; use POST /v1/completions", "messages")
        try:
            return render(self.task.tokenizer, messages, add_generation_prompt=True)
        except ConversationError as err:
            raise ApiError(422, f"model '{self.name}': {err}", "messages") from None

    def generate(self, prompts: list[list[int]], settings: dict, streamer=None) -> list[tuple[list[int], str]]:
        """(new token ids, finish reason "stop" or "length") per prompt, generated in one left-padded batch by
        `CausalLM.generate` with the request's settings and an optional streamer (one prompt); runs on the worker
        thread."""
        from adapt.tasks.causal_lm import left_pad

        batch = {k: v.to(self.accelerator.device) for k, v in left_pad(prompts, self.task.tokenizer.pad_token_id).items()}
        new = self.task.generate(self.model, batch, settings, streamer)
        lengths, ended = self.task.generated_lengths(self.model, new)
        return [(row[:n].tolist(), "stop" if stop else "length")
                for row, n, stop in zip(new, lengths.tolist(), ended.tolist())]

    def complete(self, prompts: list[list[int]], settings: dict) -> list[tuple[str, int, str]]:
        """(generated text, generated tokens, finish reason) per prompt, decoded as `adapt predict` decodes
        (special tokens skipped). Runs on the worker thread, as every use of the tokenizer does (a fast tokenizer
        is not safe to use from two threads at once)."""
        return [(self.task.tokenizer.decode(new, skip_special_tokens=True), len(new), finish)
                for new, finish in self.generate(prompts, settings)]


# ---- the application ------------------------------------------------------------------------------------
# request bodies (module level: FastAPI resolves an endpoint's annotations in the module's namespace)
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Union[str, dict]] = Field(min_length=1)

class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields (user, seed, ...) this server ignores
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stop: Optional[Union[str, list[str]]] = None

class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]

class TextPart(BaseModel):
    type: Literal["text"]
    text: str

class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]]

class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


def _message(errors: list[dict]) -> tuple[str, str | None]:
    """One line for pydantic's validation errors of a request body, and the first error's field."""
    parts, param = [], None
    for error in errors[:3]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        param = param or location or None
        parts.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
    return "; ".join(parts), param


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes (by Content-Length, or as it arrives) is answered 413
    before the application sees it; a body within the limit is read whole and handed on."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = ApiError(413, f"the request body is over this server's limit of {self.limit:,} bytes; send fewer "
                                "or shorter inputs per request", code="request_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await _send_error(send, too_big)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await _send_error(send, too_big)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect a streaming response listens for

        await self.app(scope, replay, send)


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(service: Service):
    """The FastAPI application serving `service` (see the module docstring for the endpoints)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.concurrency import iterate_in_threadpool

    from adapt.runner import json_value

    limits = service.limits

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.worker.stop()

    app = FastAPI(title=f"adapt serve: {service.name}", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            error = ApiError(400, f"malformed JSON in the request body ({detail.get('ctx', {}).get('error', 'invalid')}); "
                                  "send a JSON object", code="json_invalid")
        else:
            message, param = _message(errors)
            error = ApiError(422, f"invalid request: {message}", param)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(AdaptError)
    async def bad_input(request: Request, err: AdaptError):
        return JSONResponse(ApiError(422, str(err)).body(), status_code=422)

    @app.exception_handler(Exception)
    async def failure(request: Request, err: Exception):
        print(f"adapt serve: {type(err).__name__}: {err}", file=sys.stderr)
        error = ApiError(500, f"the model call failed ({type(err).__name__}: {err})", kind="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.name, "task": service.task.name}

    @app.post("/predict")
    async def predict(request: PredictRequest):
        if len(request.inputs) > limits.max_inputs:
            raise ApiError(413, f"{len(request.inputs)} inputs in one request, over this server's limit of "
                                f"{limits.max_inputs}; split them into several requests", "inputs", "too_many_inputs")
        lines = []
        for number, item in enumerate(request.inputs):
            line = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            if not line.strip():
                raise ApiError(422, f"inputs[{number}] is empty; give text to predict on", f"inputs.{number}")
            if "\n" in line or "\r" in line:  # `adapt predict` reads one input per line
                line = " ".join(line.splitlines())
            lines.append(line)
        records = await asyncio.wrap_future(service.worker.predict(lines))
        body = json.dumps({"model": service.name, "predictions": records}, ensure_ascii=False,
                          default=json_value, allow_nan=False)
        return Response(body, media_type="application/json")

    def check_generation(request: Sampling) -> dict:
        if not service.generates_text:
            raise ApiError(404, f"model '{service.name}' is a {service.task.name} model, not a language model; "
                                "POST /predict", code="not_a_language_model")
        if request.model != service.name:
            raise ApiError(404, f"The model '{request.model}' does not exist; this server serves '{service.name}' "
                                "(GET /v1/models)", "model", "model_not_found")
        if request.n != 1:
            raise ApiError(422, "only n=1 is supported", "n")
        if request.stop:
            raise ApiError(422, "stop sequences are not supported; generation stops at the model's end-of-text "
                                "token or max_tokens", "stop")
        return service.generation_settings(request.max_completion_tokens or request.max_tokens,
                                           request.temperature, request.top_p)

    def usage(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def stream_events(ids: list[int], settings: dict, chunk: Callable[[str | None, str | None], dict]):
        """Server-sent events of one generation: a chunk per decoded piece, a last chunk with the finish
        reason, then [DONE]."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(service.task.tokenizer, skip_prompt=True, skip_special_tokens=True)

        def run():
            try:
                return service.generate([ids], settings, streamer)[0]
            finally:
                streamer.end()  # also when generation failed: the response must not wait forever

        result = service.worker.call(run)

        async def events():
            first = chunk(None, None)
            if first:
                yield f"data: {json.dumps(first)}\n\n"
            async for piece in iterate_in_threadpool(iter(streamer)):
                if piece:
                    yield f"data: {json.dumps(chunk(piece, None))}\n\n"
            try:
                _, finish = await asyncio.wrap_future(result)
            except Exception as err:  # headers are sent: report in the stream
                yield f"data: {json.dumps(ApiError(500, f'generation failed ({err})', kind='server_error').body())}\n\n"
                return
            yield f"data: {json.dumps(chunk(None, finish))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": service.created,
                                            "owned_by": "adapt"}] if service.generates_text else []}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        settings = check_generation(request)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not prompts or len(prompts) > limits.max_inputs:
            raise ApiError(413 if prompts else 422, f"give 1 to {limits.max_inputs} prompts", "prompt")
        if request.stream and len(prompts) > 1:
            raise ApiError(422, "stream: true takes one prompt", "prompt")
        ids = await asyncio.wrap_future(service.worker.call(
            lambda: [service.prompt_ids(p, False, settings["max_new_tokens"]) for p in prompts]))
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            def chunk(text, finish):
                if text is None and finish is None:
                    return None
                return {"id": ident, "object": "text_completion", "created": created, "model": service.name,
                        "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

            return stream_events(ids[0], settings, chunk)
        results = await asyncio.wrap_future(service.worker.call(lambda: service.complete(ids, settings)))
        choices = [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}
                   for index, (text, _, finish) in enumerate(results)]
        return {"id": ident, "object": "text_completion", "created": created, "model": service.name,
                "choices": choices, "usage": usage(sum(map(len, ids)), sum(count for _, count, _ in results))}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        settings = check_generation(request)
        if len(request.messages) > limits.max_messages:
            raise ApiError(413, f"{len(request.messages)} messages, over this server's limit of {limits.max_messages}",
                           "messages")
        messages = [{"role": m.role, "content": m.content if isinstance(m.content, str)
                     else "".join(part.text for part in m.content)} for m in request.messages]
        rendered = service.render_chat(messages)
        ids = await asyncio.wrap_future(service.worker.call(
            lambda: service.prompt_ids(rendered, True, settings["max_new_tokens"])))
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            def chunk(text, finish):
                delta = ({"role": "assistant", "content": ""} if text is None and finish is None
                         else {"content": text} if text is not None else {})
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": service.name,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

            return stream_events(ids, settings, chunk)
        [(text, count, finish)] = await asyncio.wrap_future(service.worker.call(lambda: service.complete([ids], settings)))
        return {"id": ident, "object": "chat.completion", "created": created, "model": service.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage(len(ids), count)}

    return BodyLimit(app, limits.max_body_bytes)


def load_service(model_dir: str, recipe: str | None = None, overrides: list[str] = (), name: str | None = None,
                 trust_remote_code: bool = False, limits: Limits = Limits(), batch_size: int = 64) -> Service:
    """A `Service` for a run folder (or a plain Hugging Face folder with `recipe`), loaded as `adapt predict`
    loads it (`adapt.runner.load_trained`). The served name defaults to the folder's name.

    Raises:
        AdaptError: what `load_trained` raises (not a model folder, no task, pickle weights, remote code)."""
    from adapt import assets
    from adapt.runner import load_trained

    task, model = load_trained(model_dir, recipe, list(overrides), trust_remote_code)
    default = assets.embedded_name(model_dir) if assets.is_embedded(model_dir) else Path(model_dir).resolve().name
    return Service(task, model, name or default, limits, batch_size)


@contextlib.contextmanager
def serve_in_thread(service: Service, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
    """Run the real uvicorn server for `service` in a background thread (port 0: a free port) and yield its base
    URL, e.g. "http://127.0.0.1:41233"; the server stops when the block ends. For tests and benchmarks."""
    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="adapt-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def serve(model_dir: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, recipe: str | None = None,
          overrides: list[str] = (), name: str | None = None, trust_remote_code: bool = False,
          limits: Limits = Limits(), batch_size: int = 64) -> None:
    """Check the extra and the address, load the model, and serve it until Ctrl-C (uvicorn).

    Raises:
        AdaptError: the serve extra missing, an address that cannot be bound, or a model that does not load."""
    check_installed()
    check_address(host, port)
    import datasets

    datasets.disable_progress_bars()  # a tokenizing bar per request would flood the server's log
    service = load_service(model_dir, recipe, overrides, name, trust_remote_code, limits, batch_size)
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}, reachable from other machines; adapt serve has no authentication",
              file=sys.stderr)
    kind = "OpenAI-compatible /v1/completions, /v1/chat/completions and /predict" if service.generates_text else "/predict"
    print(f"serving {service.name} ({service.task.name}) on http://{host}:{port} ({kind}); Ctrl-C stops",
          file=sys.stderr)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
