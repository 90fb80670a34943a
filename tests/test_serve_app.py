"""The Serve application for real: Ray Serve on loopback, the tiny model with LoRA adapters, the official
openai client and raw HTTP. Three applications share one Serve instance:
  /        the base model + adapters alpha, beta, leak; safety=redact
  /keyed   API keys k-auth, k-rate and k-slow, 3 requests a minute per key, 1.5 s request timeout
  /strict  safety=refuse with 'alpha' on the word list; one request at a time, one queued; prompts of up to
           256 tokens
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import socket

import openai
import pytest
import requests

from tests.conftest import ADAPTER_TEXTS

HELLO = [{"role": "user", "content": "hello"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A reward model of the tiny model's shape (an untrained head: it ranks texts all the same)."""
    from transformers import AutoModelForSequenceClassification

    from app.models import load_tokenizer, resolve
    from app.train.reward import HEADS_FILE
    path, out = resolve("tiny"), tmp_path_factory.mktemp("reward")
    tok = load_tokenizer(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / HEADS_FILE).write_text(json.dumps({"heads": {"reward": 1.0}}))
    return out


@pytest.fixture(scope="module")
def server(ray_local, tiny_adapters, reward_dir, tmp_path_factory):
    from ray import serve

    from app.serve.app import build_app
    from app.serve.config import ServeArgs
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    adapters = {k: str(v) for k, v in tiny_adapters.items()}
    words = tmp_path_factory.mktemp("words") / "words.txt"
    words.write_text("alpha\n")
    common = dict(model="tiny", served_model_name="tiny", cpus_per_replica=0)
    serve.run(build_app(ServeArgs(**common, adapters=adapters, max_batch_size=4, reward_model=str(reward_dir))),
              name="main", route_prefix="/")
    serve.run(build_app(ServeArgs(**common, api_keys=["k-auth", "k-rate", "k-slow"],
                                  limits={"rate_limit_per_minute": 3, "rate_limit_burst": 3,
                                          "request_timeout_s": 1.5})),
              name="keyed", route_prefix="/keyed")
    serve.run(build_app(ServeArgs(**common, adapters=adapters, safety="refuse", sensitive_words=str(words),
                                  max_batch_size=1, limits={"max_ongoing_requests": 1, "max_queued_requests": 1,
                                                            "max_prompt_tokens": 256})),
              name="strict", route_prefix="/strict")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def client(url, prefix="", key="unused"):
    return openai.OpenAI(base_url=f"{url}{prefix}/v1", api_key=key, max_retries=0)


def sse(url, body, prefix="", key=None):
    """Raw streaming POST: (status, the data payloads), or (status, [error body]) when refused."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = requests.post(f"{url}{prefix}/v1/chat/completions", json=body, headers=headers, stream=True, timeout=60)
    if r.status_code != 200:
        return r.status_code, [r.text]
    events = [line[6:].decode() for line in r.iter_lines() if line.startswith(b"data: ")]
    return r.status_code, events


def test_chat_usage_and_length(server, tokenizer):
    from app.chat import render_prompt
    r = client(server).chat.completions.create(model="alpha", messages=HELLO, max_tokens=5, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(render_prompt(tokenizer, HELLO))
    assert r.usage.completion_tokens == 5 and r.usage.total_tokens == r.usage.prompt_tokens + 5
    assert ADAPTER_TEXTS["alpha"].startswith(r.choices[0].message.content)


def test_streaming_matches_non_streaming_and_ends_with_done(server):
    c = client(server)
    whole = c.chat.completions.create(model="beta", messages=HELLO, max_tokens=12, temperature=0)
    stream = list(c.chat.completions.create(model="beta", messages=HELLO, max_tokens=12, temperature=0, stream=True))
    pieces = [ch.choices[0].delta.content or "" for ch in stream]
    assert "".join(pieces) == whole.choices[0].message.content and len([p for p in pieces if p]) > 2
    # after the role chunk, every chunk carries text or the finish reason: nothing empty while the safety
    # filter holds text back
    assert all(ch.choices[0].delta.content or ch.choices[0].finish_reason for ch in stream[1:])
    status, events = sse(server, {"model": "beta", "messages": HELLO, "max_tokens": 4, "stream": True,
                                  "stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_lora_selected_by_model_name_and_listed(server):
    c = client(server)
    assert {m.id for m in c.models.list()} == {"tiny", "alpha", "beta", "leak"}
    for name in ("alpha", "beta"):
        text = c.chat.completions.create(model=name, messages=HELLO, max_tokens=10, temperature=0)
        assert text.choices[0].message.content.startswith(ADAPTER_TEXTS[name][:15])
    base = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=10, temperature=0)
    assert not any(base.choices[0].message.content.startswith(t[:10]) for t in ADAPTER_TEXTS.values())


def test_stop_sequences_n_and_seed(server, tokenizer):
    c = client(server)
    r = c.chat.completions.create(model="alpha", messages=HELLO, max_tokens=20, temperature=0, stop=["42"])
    assert r.choices[0].message.content == "The alpha answer is " and r.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", messages=HELLO, max_tokens=8, temperature=1.0, n=3, seed=7)
    a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    assert sorted(ch.index for ch in a.choices) == [0, 1, 2]
    assert [ch.message.content for ch in a.choices] == [ch.message.content for ch in b.choices]
    assert len({ch.message.content for ch in a.choices}) > 1  # each choice samples on its own
    assert a.usage.completion_tokens == 24
    prompt = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    text = c.completions.create(model="alpha", prompt=prompt, max_tokens=4, temperature=0)
    assert text.object == "text_completion" and text.choices[0].text.startswith("The alpha")


def test_best_of_returns_the_candidate_the_reward_model_ranks_first(server, reward_dir):
    from app.train.reward import RewardModel
    c = client(server)
    kw = dict(model="tiny", messages=HELLO, max_tokens=8, temperature=1.0, seed=11)
    candidates = [ch.message.content for ch in c.chat.completions.create(n=4, **kw).choices]
    scores = RewardModel(reward_dir).score([HELLO] * 4, candidates)
    best = c.chat.completions.create(n=1, extra_body={"best_of": 4}, **kw)
    assert len(best.choices) == 1 and best.choices[0].message.content == candidates[scores.index(max(scores))]
    assert best.usage.completion_tokens == 32  # every candidate's tokens count
    two = c.chat.completions.create(n=2, extra_body={"best_of": 4}, **kw)
    assert [ch.message.content for ch in two.choices] == [candidates[i] for i in
                                                          sorted(range(4), key=lambda i: -scores[i])[:2]]
    for prefix, body, message in [("", {"best_of": 4, "stream": True}, "stream"), ("", {"best_of": 1, "n": 2}, "n"),
                                  ("/strict", {"best_of": 2}, "reward model")]:
        r = requests.post(f"{server}{prefix}/v1/chat/completions", json={"model": "tiny", "messages": HELLO, **body},
                          timeout=30)
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_safety_filter_redacts_streamed_and_whole_answers(server):
    c = client(server)
    whole = c.chat.completions.create(model="leak", messages=HELLO, max_tokens=40, temperature=0)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="leak", messages=HELLO, max_tokens=40, temperature=0, stream=True))
    for text in (whole.choices[0].message.content, streamed):
        assert text.startswith("Write to [EMAIL] or call [PHONE] today.")
        assert "jane" not in text and "1381234" not in text


def test_refuse_mode(server):
    r = client(server, "/strict").chat.completions.create(model="alpha", messages=HELLO, max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason == "content_filter" and r.choices[0].message.content.startswith("I can't")
    ok = client(server, "/strict").chat.completions.create(model="beta", messages=HELLO, max_tokens=6, temperature=0)
    assert ok.choices[0].finish_reason == "length"


BAD = [
    (b"{not json", 400, "invalid_json"),
    (b'{"model": "tiny", "messages": []}', 400, "invalid_value"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', 400, "invalid_value"),
    (b'{"model": "tiny", "max_tokens": -3, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_value"),
    (b'{"model": "tiny", "max_tokens": 99999999, "messages": [{"role": "user", "content": "x"}]}', 400,
     "context_length_exceeded"),
    (b'{"model": "tiny", "temperature": 9, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_value"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "word " * 9000}]}).encode(), 400,
     "context_length_exceeded"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 1_100_000}]}).encode(), 413,
     "request_too_large"),
]


@pytest.mark.parametrize("body,status,code", BAD, ids=[
    "bad-json", "empty-messages", "wrong-type", "negative-max-tokens", "huge-max-tokens", "temperature-range",
    "unknown-model", "prompt-too-long", "oversize-body"])
def test_bad_requests_get_openai_errors(server, body, status, code):
    r = requests.post(f"{server}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_server_keeps_serving_after_bad_input(server):
    for body, _, _ in BAD[:3]:
        requests.post(f"{server}/v1/chat/completions", data=body, timeout=30)
    assert requests.get(f"{server}/nope", timeout=10).json()["error"]["code"] == "404"
    assert requests.get(f"{server}/health", timeout=10).json() == {"status": "ok"}
    r = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_hostile_content_and_sampling_edges_are_answered(server):
    """What a JSON body can carry is a 200 or a 4xx naming the parameter, never a 5xx: a temperature that would
    overflow the softmax, lone surrogates, NUL and control characters, a seed beyond 64 bits; a prompt over
    limits.max_prompt_tokens is a 400 before it reaches the engine."""
    def post(body, prefix=""):
        return requests.post(f"{server}{prefix}/v1/chat/completions", data=json.dumps(body), timeout=60,
                             headers={"Content-Type": "application/json"})
    for extra in ({"temperature": 1e-300}, {"top_p": 1e-300, "temperature": 2}, {"seed": 2**80},
                  {"messages": [{"role": "user", "content": "\ud800 lone \udfff"}]},
                  {"messages": [{"role": "user", "content": "\x00\x01\x1b[31m\u202e\ufeff"}], "stop": ["\ud83d"]}):
        r = post({"model": "tiny", "messages": HELLO, "max_tokens": 3, **extra})
        assert r.status_code == 200, (extra, r.text)
        assert r.json()["usage"]["completion_tokens"] <= 3
    r = post({"model": "tiny", "messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 1}, "/strict")
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "messages" and "at most 256" in r.json()["error"]["message"]


def fuzz_body(rng) -> bytes:
    """One seeded request: valid with edge values, then (half of them) one or two fields replaced by anything,
    (one in twenty) cut short."""
    odd = ["", "\ud800", "\x00", "\u202e", "你好" * rng.randint(1, 50), "x" * rng.randint(1, 3000), "😀", "\n" * 40]
    body = {"model": rng.choice(["tiny", "alpha"]),
            "messages": [{"role": rng.choice(["user", "system", "assistant"]), "content": rng.choice(odd)}
                         for _ in range(rng.randint(1, 3))],
            "max_tokens": rng.choice([1, 2, 4]), "temperature": rng.choice([0, 1e-300, 0.7, 2.0]),
            "top_p": rng.choice([1e-300, 0.5, 1.0]), "n": rng.choice([1, 2]), "seed": rng.choice([None, 0, -5, 2**80]),
            "stop": rng.choice([None, "\n", ["a", "\ud83d"]]), "stream": rng.choice([False, True])}
    anything = [None, True, -1, 0, 2**70, 1e300, "1", [], {}, "nope", [{"role": "robot"}], *odd]
    for key in rng.sample(sorted(body), rng.choice([0, 0, 1, 2])):
        body[key] = rng.choice(anything)
    raw = json.dumps(body)
    return raw[:rng.randint(1, len(raw))].encode() if rng.random() < 0.05 else raw.encode()


def test_seeded_fuzz_from_8_clients_gets_no_5xx_and_no_hang(server):
    """240 seeded requests (valid, at the edges, malformed, cut short) from 8 clients at once: each is a 200 or
    a 4xx with the OpenAI envelope within 60 s, and the server answers normally afterwards."""
    import random
    rng = random.Random(0)
    bodies = [fuzz_body(rng) for _ in range(240)]

    def send(body: bytes) -> int:
        r = requests.post(f"{server}/v1/chat/completions", data=body, timeout=60,
                          headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
        else:
            _ = r.content  # a stream is read to its end
        return r.status_code
    with cf.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, bodies))
    counts = {code: statuses.count(code) for code in set(statuses)}
    print("fuzz statuses", counts)
    assert all(code == 200 or 400 <= code < 500 for code in counts), counts
    assert counts.get(200, 0) >= 20 and sum(v for k, v in counts.items() if k != 200) >= 100, counts
    r = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_api_keys_and_per_key_rate_limit(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, "/keyed", key="wrong").chat.completions.create(model="tiny", messages=HELLO, max_tokens=1)
    assert requests.get(f"{server}/keyed/v1/models", timeout=10).status_code == 401
    assert client(server, "/keyed", key="k-auth").chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=1).usage.completion_tokens == 1
    rate = client(server, "/keyed", key="k-rate")
    for _ in range(3):
        rate.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        rate.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1)
    assert int(err.value.response.headers["Retry-After"]) >= 1
    assert client(server, "/keyed", key="k-auth").chat.completions.create(  # the other key is unaffected
        model="tiny", messages=HELLO, max_tokens=1).usage.completion_tokens == 1


def test_overload_answers_503_while_accepted_requests_complete(server):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 60, "temperature": 0, "stream": True}
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: sse(server, body, "/strict"), range(8)))
    accepted = [events for status, events in results if status == 200]
    rejected = [events for status, events in results if status == 503]
    assert accepted and rejected and len(accepted) + len(rejected) == 8
    for events in accepted:
        assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 60
    r = requests.post(f"{server}/strict/v1/chat/completions", json={**body, "stream": False}, timeout=60)
    assert r.status_code == 200  # capacity comes back
    busy = [pool_result for pool_result in results if pool_result[0] == 503]
    assert json.loads(busy[0][1][0])["error"]["code"] == "overloaded"


def test_non_loopback_without_keys_is_refused():
    from app.config import UserError
    from app.serve.app import require_keys
    with pytest.raises(UserError, match="api_keys"):
        require_keys("0.0.0.0", [])
    require_keys("0.0.0.0", ["k"])
    require_keys("127.0.0.1", [])


def test_timeout_mid_stream_is_an_error_chunk(server):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 1900, "temperature": 0, "stream": True}
    status, events = sse(server, body, "/keyed", key="k-slow")
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout"
    assert any(json.loads(e).get("choices") for e in events[:-2])  # content went out before the timeout
    r = requests.post(f"{server}/keyed/v1/chat/completions", json={**body, "stream": False},
                      headers={"Authorization": "Bearer k-slow"}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"


@pytest.mark.gpu
def test_vllm_engine_streams_events():
    import asyncio

    from app.chat import render_prompt
    from app.serve.engines import GenParams, VLLMEngine
    engine = VLLMEngine("smollm2-135m-instruct", max_batch_size=8, max_loras=0,
                        extra={"gpu_memory_utilization": 0.3, "max_model_len": 2048})
    ids = render_prompt(engine.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])

    async def answer():
        return [e async for e in engine.generate(ids, GenParams(max_tokens=16, temperature=0, n=2))]
    events = asyncio.run(answer())
    finals = [e for e in events if e["finish_reason"]]
    assert sorted(e["index"] for e in finals) == [0, 1]
    text = "".join(e["text"] for e in events if e["index"] == 0)
    assert "Paris" in text
