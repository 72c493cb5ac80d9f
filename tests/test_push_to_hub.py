"""`adapt finetune --push-to-hub REPO`: checked before training (an unreachable Hub, no token, a bad repository id
fail in one line and write nothing), and a real `huggingface_hub` upload of the finished run folder to a small
local stand-in for the Hub's HTTP API (whoami, create repo, preupload, commit), whose received files are read back."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapt.cli import app
from conftest import TINY_RUN

TOKEN = "hf_test_token"


class FakeHub(BaseHTTPRequestHandler):
    """The few Hub endpoints `HfApi.whoami`, `create_repo` and `upload_folder` call; every file is committed
    as a regular (base64) blob, and kept in `server.files`."""

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: dict | None = None):
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def do_HEAD(self):
        self.server.calls.append(("HEAD", self.path))
        self._reply(200)

    def do_GET(self):
        self.server.calls.append(("GET", self.path))
        if self.path == "/api/whoami-v2":
            if self.headers.get("authorization") != f"Bearer {TOKEN}":
                return self._reply(401, {"error": "Invalid credentials"})
            return self._reply(200, {"name": "tester", "type": "user"})
        self._reply(404, {"error": f"no {self.path}"})

    def do_POST(self):
        self.server.calls.append(("POST", self.path))
        body = self._body()
        endpoint = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            request = json.loads(body)
            self.server.created.append(request)
            repo = f"{request.get('organization') or 'tester'}/{request['name']}"
            return self._reply(200, {"url": f"{endpoint}/{repo}", "name": repo})
        if self.path == "/api/validate-yaml":  # the model card's metadata, checked before the commit
            self.server.cards.append(json.loads(body))
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"{endpoint}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        self._reply(404, {"error": f"no {self.path}"})


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.calls, server.created, server.cards, server.files = [], [], [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.shutdown()


def finetune_args(tiny_bert, train, output_dir, *extra) -> list[str]:
    overrides = [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in TINY_RUN]
    return ["finetune", "--recipe", "sentiment", "--model", str(tiny_bert), "--data", str(train),
            "--output-dir", str(output_dir), *extra, *overrides]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe closes


def test_unreachable_hub_fails_in_one_line_before_training(tiny_bert, sentiment_csv, tmp_path):
    output = tmp_path / "run"
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_TOKEN": TOKEN,
           "ADAPT_CACHE": str(tmp_path / "cache")}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-m", "adapt", *finetune_args(tiny_bert, sentiment_csv, output,
                                                                          "--push-to-hub", "tester/sentiment")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --push-to-hub tester/sentiment: the Hugging Face Hub at "
                                    f"{env['HF_ENDPOINT']} is unreachable")
    assert not output.exists() and not (tmp_path / "cache").exists()  # nothing trained, nothing written


def test_missing_token_bad_token_and_bad_repo_id_are_refused(tiny_bert, sentiment_csv, tmp_path, fake_hub,
                                                              monkeypatch):
    output = tmp_path / "run"
    result = CliRunner().invoke(app, finetune_args(tiny_bert, sentiment_csv, output, "--push-to-hub", "bad repo!"))
    assert result.exit_code == 2 and "--push-to-hub bad repo!: not a repository id" in result.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    result = CliRunner().invoke(app, finetune_args(tiny_bert, sentiment_csv, output, "--push-to-hub", "tester/x"))
    assert result.exit_code == 2 and "the Hub refused the token (Invalid user token." in result.stderr
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    result = CliRunner().invoke(app, finetune_args(tiny_bert, sentiment_csv, output, "--push-to-hub", "tester/x"))
    assert result.exit_code == 2
    assert "--push-to-hub tester/x: not logged in to the Hugging Face Hub; run `hf auth login`" in result.stderr
    assert not output.exists()
    assert ("POST", "/api/repos/create") not in fake_hub.calls


def test_finished_run_is_uploaded_with_its_card(tiny_bert, sentiment_csv, tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "run"
    result = CliRunner().invoke(app, finetune_args(tiny_bert, sentiment_csv, output, "--push-to-hub",
                                                   "tester/sentiment-tiny"))
    assert result.exit_code == 0, result.output
    assert f"uploaded {output} to http://127.0.0.1:{fake_hub.server_port}/tester/sentiment-tiny" in result.stderr
    assert fake_hub.created[0]["name"] == "sentiment-tiny" and fake_hub.created[0]["type"] == "model"
    # the check ran before the training and the upload after it: whoami first, the commit last
    paths = [path for _, path in fake_hub.calls]
    assert fake_hub.calls[0][0] == "HEAD"
    assert paths.index("/api/whoami-v2") < paths.index("/api/repos/create")
    assert paths[-1].startswith("/api/models/tester/sentiment-tiny/commit/")
    uploaded = set(fake_hub.files)
    local = {str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()}
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", "recipe.yaml",
            "metrics.json"} <= uploaded
    assert uploaded == {p for p in local if not p.startswith("checkpoints/") and not Path(p).name.startswith(".")}
    for name in ("README.md", "model.safetensors", "metrics.json"):
        assert fake_hub.files[name] == (output / name).read_bytes()
    assert "library_name: transformers" in fake_hub.files["README.md"].decode()


def test_evaluate_modules_ask_the_hub_with_the_same_http_check(fake_hub, monkeypatch):
    """One reachability check (a HEAD request through huggingface_hub's session, whose proxy settings apply) for
    --push-to-hub and for evaluate Hub ids, not a raw TCP connection that would bypass HTTPS_PROXY."""
    import evaluate
    from huggingface_hub import constants

    from adapt.hub import unreachable_reason
    from adapt.metrics.evaluate_module import hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)
    assert unreachable_reason() is None and hub_reachable()
    assert fake_hub.calls == [("HEAD", "/"), ("HEAD", "/")]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert unreachable_reason() and not hub_reachable()
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)  # offline: not even asked
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{fake_hub.server_port}")
    assert not hub_reachable() and len(fake_hub.calls) == 2
