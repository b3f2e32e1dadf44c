"""`mmembed serve`: a real uvicorn server on a free port, called with the real openai client; served vectors equal
Embedder.encode (text, images, text+image, rationale mode, <|emb|>), dynamic batching, 400 / 401 / 404 / 413 / 503
answers with OpenAI's error body, and SIGTERM finishing the requests in flight."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from support import free_port

import mmembed
from mmembed.inputs import PromptTemplate
from mmembed.rationale import GRACE_SYSTEM_PROMPT, RationaleConfig
from mmembed.serve.server import build_server
from mmembed.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.",
             "A cat sits on the mat."]


class Server:
    """A uvicorn server for ``model`` in a background thread, on a free port of 127.0.0.1."""

    def __init__(self, model, **settings) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = ServeSettings(model_name="tiny", **settings)
        self.server = build_server(model, self.settings, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def client(self, api_key: str = "unused"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def call(self, path: str, body=None, headers: dict | None = None) -> tuple[int, dict | str]:
        """``(status, parsed body)`` of a GET (no body) or POST (a dict as JSON, or raw bytes)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json",
                                                                             **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def metric(self, name: str, headers: dict | None = None) -> float:
        status, text = self.call("/metrics", headers=headers)
        assert status == 200
        return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE).group(1))

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def slow_upload(server: Server, body: bytes) -> socket.socket:
    """A client that sent its headers and the first bytes of ``body`` only: a request on its way, which a batch
    about to start waits for (up to --max-wait-ms)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
    wait_for(server, "mmembed_requests_arriving", 1)
    return sock


def wait_for(server: Server, name: str, value: float) -> None:
    deadline = time.monotonic() + 10
    while server.metric(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def assert_same(served, reference) -> None:
    """Exact in float32 up to batching noise: elementwise within 1e-5 and cosine > 0.9999."""
    served, reference = np.atleast_2d(served), np.atleast_2d(reference)
    assert served.shape == reference.shape
    assert np.abs(served - reference).max() < 1e-5
    cos = (served * reference).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() > 0.9999


def data_url(image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def error_of(status_body: tuple[int, dict]) -> tuple[int, str, str | None]:
    status, body = status_body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return status, body["error"]["message"], body["error"]["code"]


# ---------------------------------------------------------------------------------------------------- text model
@pytest.fixture(scope="module")
def text_model(qwen2_path):
    return mmembed.load(str(qwen2_path), dtype="float32", device="cpu", prompts={"query": "Query: "})


@pytest.fixture(scope="module")
def text_server(text_model):
    server = Server(text_model, max_inputs=8)
    yield server
    server.close()


def test_text_vectors_equal_encode_float_and_base64(text_server, text_model):
    client = text_server.client()
    reference = text_model.encode(SENTENCES)
    as_float = client.embeddings.create(input=SENTENCES, model="tiny", encoding_format="float")
    assert [d.index for d in as_float.data] == [0, 1, 2, 3] and as_float.model == "tiny"
    assert_same(vectors(as_float), reference)
    as_base64 = client.embeddings.create(input=SENTENCES, model="tiny")  # the client asks for base64 by default
    assert np.array_equal(vectors(as_base64), vectors(as_float))
    # base64 is little-endian float32, decoded by hand too
    status, body = text_server.call("/v1/embeddings", {"input": SENTENCES[0], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and np.array_equal(decoded, vectors(as_float)[0])
    # usage counts the rendered tokens
    tokens = sum(len(ids) for ids in text_model.backbone.tokenize_texts(SENTENCES))
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == tokens
    # a single string, and a named prompt (mmembed's extra field)
    one = client.embeddings.create(input=SENTENCES[2], model="tiny", encoding_format="float")
    assert_same(vectors(one), reference[2])
    query = client.embeddings.create(input=SENTENCES[:2], model="tiny", extra_body={"prompt_name": "query"})
    assert_same(vectors(query), text_model.encode(SENTENCES[:2], prompt_name="query"))
    assert text_server.call("/v1/models")[1]["data"][0]["id"] == "tiny"
    assert text_server.call("/health") == (200, {"status": "ok"})


def test_the_readme_client_snippet_runs_against_the_server(text_server, text_model):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    serving = readme.split("## Serving", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```py\n(.*?)```", serving, flags=re.DOTALL).group(1)
    code = code.replace("http://localhost:8000", text_server.url).replace('"./my-model"', '"tiny"')
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the README's own snippet
    assert_same(np.array(scope["vectors"], dtype=np.float32), text_model.encode(["a cat", "a dog"]))


def test_dimensions_truncate_then_normalise(text_server, text_model):
    served = vectors(text_server.client().embeddings.create(input=SENTENCES, model="tiny", dimensions=16))
    assert served.shape == (4, 16)
    assert_same(served, text_model.encode(SENTENCES, truncate_dim=16))
    assert np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-6)
    for bad in (0, 65):
        status, message, code = error_of(text_server.call("/v1/embeddings", {"input": "hi", "dimensions": bad}))
        assert (status, code) == (400, "invalid_dimensions") and f"'dimensions' is {bad}" in message
        assert "1 to 64" in message


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    ({"input": ["a cat", "two dogs", ""]}, 400, "empty_input", "input[2] is an empty string"),
    ({"input": ["a cat", 5]}, 400, "invalid_type", "input[1] has type int; send a string"),
    ({"input": ["a cat", None]}, 400, "invalid_type", "input[1] has type NoneType"),
    ({"input": [[1, 2, 3]]}, 400, "invalid_type", "input[0] is token ids"),
    ({"input": [1, 2, 3]}, 400, "invalid_type", "input is token ids"),
    ({"input": []}, 400, "empty_input", "input is an empty list"),
    ({"input": ["x"] * 9}, 400, "too_many_inputs", "input holds 9 inputs; this server takes at most 8"),
    ({"input": ["ok", {"text": "a cat", "image": "data:image/png;base64,!!not base64!!"}]}, 400, "invalid_image",
     "input[1].image: the data: URL's base64 cannot be decoded"),
    ({"input": [{"image": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}]}, 400,
     "invalid_image", "input[0].image: the data: URL's content is not an image PIL can read"),
    ({"input": ["ok", {"image": "https://example.com/cat.png"}]}, 400, "invalid_image",
     "input[1].image: 'https://example.com/cat.png' is a remote URL"),
    ({"input": [{"image": "/etc/passwd"}]}, 400, "invalid_image", "is a local path, and this server reads no local"),
    ({"input": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "missing_input", "not both"),
    ({}, 400, "missing_input", "not neither"),
    ({"input": "a", "encoding_format": "int8"}, 400, "invalid_field", "'encoding_format': Input should be"),
    ({"input": "a", "dimension": 8}, 400, "invalid_field", "unknown field 'dimension'"),
    ({"input": "a", "prompt_name": "nope"}, 400, "invalid_prompt", "prompt_name='nope' is not one of"),
    ({"input": "a", "model": "gpt-4"}, 404, "model_not_found", "the model 'gpt-4' is not served here"),
    (b"{not json", 400, "invalid_json", "the request body is not valid JSON"),
])
def test_each_bad_input_is_a_400_naming_it(text_server, body, status, code, message):
    answer = error_of(text_server.call("/v1/embeddings", body))
    assert answer[0] == status and answer[2] == code and message in answer[1], answer


def test_image_sent_to_a_text_only_model_and_the_openai_client_error(text_server, images):
    client = text_server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(input=["a cat", {"image": data_url(images[0])}], model="tiny")  # type: ignore[list-item]
    assert caught.value.status_code == 400
    assert caught.value.body["message"].startswith("input[1] holds an image, but ")
    assert "is a text-only model" in caught.value.body["message"]
    status, _, code = error_of(text_server.call("/v1/nothing"))
    assert (status, code) == (404, "not_found")


def test_request_over_the_size_limit_is_413(text_model):
    server = Server(text_model, max_request_bytes=2000)
    try:
        status, message, code = error_of(server.call("/v1/embeddings", {"input": ["x" * 3000]}))
        assert (status, code) == (413, "request_too_large") and "limit of 2000 bytes" in message
        assert server.call("/v1/embeddings", {"input": ["small"]})[0] == 200
    finally:
        server.close()


def test_an_unexpected_failure_is_a_500_without_traceback(qwen2_path, caplog):
    """A model whose weights are on the meta device fails inside encode (no data to copy out): not the client's
    fault, so a 500 with one line; the traceback goes to the log."""
    model = mmembed.load(str(qwen2_path), dtype="float32", device="cpu")
    model.to("meta")
    server = Server(model)
    try:
        status, message, code = error_of(server.call("/v1/embeddings", {"input": ["a cat"]}))
        assert (status, code) == (500, "internal_error")
        assert message == "internal server error; the server's log has the details."
        assert server.metric('mmembed_requests_total{code="500"}') == 1
        assert server.call("/health")[0] == 200  # the server keeps serving
    finally:
        server.close()
    assert any(r.exc_info for r in caplog.records if "unexpected error on /v1/embeddings" in r.getMessage())


def test_api_key_guards_every_route_but_health(text_model):
    server = Server(text_model, api_key="s3cret")
    try:
        for key in ("wrong", "s3cret-not"):
            with pytest.raises(openai.AuthenticationError) as caught:
                server.client(api_key=key).embeddings.create(input="a cat", model="tiny")
            assert "the API key is" in caught.value.body["message"]
        status, message, code = error_of(server.call("/v1/embeddings", {"input": "a cat"}))
        assert (status, code) == (401, "invalid_api_key") and "is missing" in message
        assert server.call("/metrics")[0] == 401 and server.call("/v1/models")[0] == 401
        assert server.call("/health") == (200, {"status": "ok"})
        ok = server.client(api_key="s3cret").embeddings.create(input="a cat", model="tiny")
        assert len(ok.data) == 1
        assert server.metric('mmembed_requests_total{code="200"}', {"Authorization": "Bearer s3cret"}) == 1
    finally:
        server.close()


def test_32_concurrent_clients_get_their_own_vectors_in_merged_batches(text_model):
    server = Server(text_model, max_wait_ms=5000)
    texts = [[f"{SENTENCES[k % 4]} {k}", f"request {k} second"] for k in range(32)]
    reference = text_model.encode([t for pair in texts for t in pair])
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(32)

    def one(k: int) -> None:
        client = server.client()
        barrier.wait()
        results[k] = vectors(client.embeddings.create(input=texts[k], model="tiny", encoding_format="float"))

    slow = slow_upload(server, b'{"input": "held back"}')  # every request queues while it is on its way
    try:
        threads = [threading.Thread(target=one, args=(k,)) for k in range(32)]
        for t in threads:
            t.start()
        wait_for(server, "mmembed_queue_depth", 32)
        slow.close()
        for t in threads:
            t.join(120)
        assert sorted(results) == list(range(32))
        for k in range(32):
            assert_same(results[k], reference[2 * k:2 * k + 2])
        # one encode call for the 32 requests (64 inputs), split back in order
        assert server.metric("mmembed_batch_requests_count") == 1 and server.metric("mmembed_batch_requests_sum") == 32
        assert server.metric("mmembed_batch_inputs_sum") == 64
        assert server.metric('mmembed_requests_total{code="200"}') == 32
    finally:
        slow.close()
        server.close()


def test_a_full_queue_answers_503_and_the_waiting_requests_finish(text_model):
    """A client uploading its body slowly is on its way, so the queued batch waits for it (up to --max-wait-ms);
    meanwhile the queue (--max-queue 2) fills and the next request gets 503."""
    server = Server(text_model, max_queue=2, max_wait_ms=3000)
    answers: list = []
    body = json.dumps({"input": ["slow upload"]}).encode()
    slow = slow_upload(server, body)
    try:
        waiting = [threading.Thread(target=lambda k=k: answers.append(
            server.call("/v1/embeddings", {"input": [f"waiting {k}"]}))) for k in range(2)]
        for t in waiting:
            t.start()
        wait_for(server, "mmembed_queue_depth", 2)
        status, message, code = error_of(server.call("/v1/embeddings", {"input": ["one too many"]}))
        assert (status, code) == (503, "queue_full") and "queue is full (2 requests waiting)" in message
        for t in waiting:
            t.join(30)
        assert [a[0] for a in answers] == [200, 200]
        assert server.metric("mmembed_batch_requests_count") == 1  # the two waiting requests went as one batch
        slow.sendall(body[5:])
        slow.settimeout(30)
        reply = b""
        while b'"usage"' not in reply:  # headers and body may come in separate reads
            chunk = slow.recv(65536)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b'"embedding"' in reply
    finally:
        slow.close()
        server.close()


# ---------------------------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def vl_model(qwen2_vl_path):
    return mmembed.load(str(qwen2_vl_path), dtype="float32", device="cpu")


def test_vlm_text_image_and_pair_equal_encode(vl_model, images, tmp_path):
    (tmp_path / "cats").mkdir()
    images[2].save(tmp_path / "cats" / "c.png")
    server = Server(vl_model, image_root=tmp_path / "cats")
    client = server.client()
    try:
        inputs = ["a red square", {"image": data_url(images[0])}, {"text": "a photo", "image": data_url(images[1])},
                  {"image": "c.png"}]
        served = client.embeddings.create(input=inputs, model="tiny", encoding_format="float")  # type: ignore[arg-type]
        reference = vl_model.encode(["a red square", images[0], {"text": "a photo", "image": images[1]},
                                     images[2]])
        assert_same(vectors(served), reference)
        # vLLM's shape: one conversation with image_url parts, one embedding
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(images[1])}},
                                                 {"type": "text", "text": "a photo"}]}]
        chat = client.post("/embeddings", cast_to=openai.types.CreateEmbeddingResponse,
                           body={"model": "tiny", "messages": messages, "encoding_format": "float"})
        assert_same(vectors(chat), reference[2])
        turns = [{"role": "system", "content": "Describe."}, *messages]
        chat = client.post("/embeddings", cast_to=openai.types.CreateEmbeddingResponse,
                           body={"model": "tiny", "messages": turns, "encoding_format": "float"})
        conversation = [{"role": "system", "content": "Describe."},
                        {"role": "user", "content": [{"type": "image", "image": images[1]},
                                                     {"type": "text", "text": "a photo"}]}]
        assert_same(vectors(chat), vl_model.encode([conversation]))
        for path, fragment in (("../outside.png", "is outside the server's --image-root"),
                               ("missing.png", "does not exist")):
            status, message, code = error_of(server.call("/v1/embeddings", {"input": [{"image": path}]}))
            assert (status, code) == (400, "invalid_image") and message.startswith("input[0].image")
            assert fragment in message
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------------- GRACE, <|emb|>
def test_rationale_mode_model_serves_encode_vectors(qwen2_path, images):
    model = mmembed.load(str(qwen2_path), template=PromptTemplate(chat=True, system=GRACE_SYSTEM_PROMPT),
                         pooling={"mode": "mean", "exclude_prefix": True}, dtype="float32", device="cpu",
                         rationale=RationaleConfig(max_new_tokens=4, batch_size=4))
    server = Server(model)
    try:
        served = server.client().embeddings.create(input=SENTENCES[:3], model="tiny", encoding_format="float")
        assert_same(vectors(served), model.encode(SENTENCES[:3], cache_rationales=False))
        status, message, code = error_of(server.call("/v1/embeddings", {"input": [
            "a", {"text": "b", "image": data_url(images[0])}]}))
        assert (status, code) == (400, "image_not_supported")
        assert message.startswith("input[1] holds an image, but ")  # a text-only model (and rationale mode)
    finally:
        server.close()


def test_emb_token_model_serves_its_one_vector_and_refuses_several(qwen2_emb_path):
    model = mmembed.load(str(qwen2_emb_path), pooling={"mode": "special_token", "token": "<|emb|>"},
                         template=PromptTemplate(chat=True, response="<|emb|>"), dtype="float32", device="cpu")
    server = Server(model)
    try:
        served = server.client().embeddings.create(input=SENTENCES, model="tiny", encoding_format="float")
        assert_same(vectors(served), np.concatenate(model.encode(SENTENCES)))
        two = [{"role": "user", "content": "a cat"}, {"role": "assistant", "content": "<|emb|>"},
               {"role": "user", "content": "two dogs"}, {"role": "assistant", "content": "<|emb|>"}]
        status, message, code = error_of(server.call("/v1/embeddings", {"messages": two}))
        assert (status, code) == (400, "multiple_embeddings")
        assert message.startswith("messages gives 2 embeddings (one per '<|emb|>' token)")
        status, body = server.call("/v1/embeddings", {"messages": two[:2]})  # one <|emb|>: its vector
        assert status == 200
        assert_same(np.array(body["data"][0]["embedding"], dtype=np.float32), model.encode([two[:2]])[0])
    finally:
        server.close()


def test_an_input_error_inside_a_merged_batch_reaches_only_its_request(qwen2_emb_path):
    """Without the template's <|emb|> response, a text without the token fails in the pooler, after merging."""
    model = mmembed.load(str(qwen2_emb_path), pooling={"mode": "special_token", "token": "<|emb|>"},
                         dtype="float32", device="cpu")
    server = Server(model, max_wait_ms=5000)
    bodies = [{"input": ["a cat <|emb|>"]}, {"input": ["two dogs <|emb|>", "no token here"]},
              {"input": "the mat <|emb|>"}]
    answers: dict[int, tuple] = {}
    slow = slow_upload(server, b'{"input": "held back"}')  # the three requests queue while it is on its way
    try:
        threads = [threading.Thread(target=lambda k=k: answers.__setitem__(k, server.call("/v1/embeddings",
                                                                                          bodies[k])))
                   for k in range(3)]
        for t in threads:
            t.start()
        wait_for(server, "mmembed_queue_depth", 3)
        slow.close()  # gone before its body: the batch starts
        for t in threads:
            t.join(60)
        assert server.metric("mmembed_batch_requests_bucket{le=\"2\"}") == 0  # the three went as one batch
        assert server.metric("mmembed_batch_requests_count") == 1
        assert answers[0][0] == answers[2][0] == 200
        assert_same(np.array(answers[0][1]["data"][0]["embedding"], dtype=np.float32),
                    model.encode(["a cat <|emb|>"])[0])
        assert_same(np.array(answers[2][1]["data"][0]["embedding"], dtype=np.float32),
                    model.encode(["the mat <|emb|>"])[0])
        status, message, code = error_of(answers[1])
        assert (status, code) == (400, "invalid_input") and message.startswith("input[1]: no '<|emb|>' token")
        assert server.metric('mmembed_requests_total{code="400"}') == 2  # and the client that left
    finally:
        slow.close()
        server.close()


# ---------------------------------------------------------------------------------------------------- process


def test_sigterm_finishes_the_request_in_flight_then_exits_0(qwen2_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "mmembed.cli", "serve", str(qwen2_path), "--port", str(port),
                                "--dtype", "float32", "--device", "cpu", "--max-wait-ms", "1500",
                                "--served-model-name", "tiny"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        answer: list = []
        request = urllib.request.Request(url + "/v1/embeddings", data=json.dumps({"input": ["in flight"]}).encode(),
                                         headers={"Content-Type": "application/json"})
        thread = threading.Thread(target=lambda: answer.append(json.load(urllib.request.urlopen(request,
                                                                                                timeout=30))))
        thread.start()
        time.sleep(0.5)  # the request waits in the batcher (--max-wait-ms 1500)
        process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert len(answer) == 1 and len(answer[0]["data"][0]["embedding"]) == 64
        assert process.wait(30) == 0
        stderr = process.stderr.read()
        assert f"mmembed serve: 'tiny' on http://127.0.0.1:{port}/v1 (dim 64)" in stderr
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_checks_options_and_port_before_loading_and_names_the_serve_extra(qwen2_path, monkeypatch, capsys):
    from mmembed.cli import main

    assert main(["serve", str(qwen2_path), "--max-queue", "0"]) == 2  # options are checked before the model loads
    assert capsys.readouterr().err.strip() == "mmembed: error: max_queue=0 must be an integer >= 1."
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "/no/such/model", "--port", str(port)]) == 2  # the port is tried first
        assert capsys.readouterr().err.strip() == (f"mmembed: error: cannot listen on 127.0.0.1:{port} (Address "
                                                   f"already in use); choose another --port or --host.")
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", str(qwen2_path), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == ("mmembed: error: mmembed serve needs uvicorn, which is not installed: "
                                               "pip install 'mmembed[serve]'.")


def test_serving_layer_imports_downward_only():
    package = ROOT / "mmembed"
    for file in (package / "serve").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert "train" not in node.module.split("."), f"{file.name} imports {node.module}"
    for file in package.rglob("*.py"):
        if "serve" in file.parts or file.name == "cli.py" and file.parent == package:
            continue
        assert "serve" not in {part for node in ast.walk(ast.parse(file.read_text()))
                               if isinstance(node, ast.ImportFrom) and node.module
                               for part in node.module.split(".")}, file
