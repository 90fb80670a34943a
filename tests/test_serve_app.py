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
from pathlib import Path

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
def kb_index(tmp_path_factory):
    """A BM25 index over 12 knowledge-base pages (app/demo/kb.py) and their questions."""
    import random

    from app.demo.kb import knowledge_base
    from app.models import load_tokenizer
    from app.rag.index import build
    pages, questions = knowledge_base(random.Random(3), 12)
    out = tmp_path_factory.mktemp("index")
    build(pages, out, load_tokenizer("tiny"), dense=False)
    return out, pages, questions


@pytest.fixture(scope="module")
def served(ray_local, tiny_adapters, reward_dir, kb_index, tiny_onnx, tmp_path_factory):
    from ray import serve

    from app.serve.ingress import build_app
    from app.serve.config import ServeArgs
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    adapters = {k: str(v) for k, v in tiny_adapters.items()}
    words = tmp_path_factory.mktemp("words") / "words.txt"
    words.write_text("alpha\n")
    common = dict(model="tiny", served_model_name="tiny", cpus_per_replica=0)
    log = tmp_path_factory.mktemp("request-log")
    loop_log = tmp_path_factory.mktemp("loop-log")  # the loop test's own served model and log
    apps = {  # deployed together: their replicas start at once
        "main": ServeArgs(**common, adapters=adapters, max_batch_size=4, reward_model=str(reward_dir),
                          rag={"index": str(kb_index[0]), "k": 2}, logging={"requests": True, "path": str(log)}),
        "keyed": ServeArgs(**common, api_keys=["k-auth", "k-rate", "k-slow"],
                           limits={"rate_limit_per_minute": 3, "rate_limit_burst": 3, "request_timeout_s": 1.5}),
        "strict": ServeArgs(**common, adapters=adapters, safety="refuse", sensitive_words=str(words), max_batch_size=1,
                            limits={"max_ongoing_requests": 1, "max_queued_requests": 1, "max_prompt_tokens": 256}),
        "onnx": ServeArgs(model=str(tiny_onnx[0] / "model"), served_model_name="tiny", cpus_per_replica=0),
        "loop": ServeArgs(**common, logging={"requests": True, "path": str(loop_log)})}
    serve.run_many([serve.RunTarget(build_app(a), name=name, route_prefix="/" if name == "main" else f"/{name}")
                    for name, a in apps.items()])
    yield f"http://127.0.0.1:{port}", log, loop_log
    serve.shutdown()


@pytest.fixture(scope="module")
def server(served):
    return served[0]


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


def test_rag_answers_carry_the_retrieved_sources(server, kb_index):
    """"rag": true puts the index's top chunks into the system turn (more prompt tokens) and returns them as
    `sources`, the page that holds the answer first; streams carry them on the role chunk; a server without
    an index answers 400."""
    _, pages, questions = kb_index
    c = client(server)
    for q in questions[:3]:
        kw = dict(model="tiny", messages=[{"role": "user", "content": q["question"]}], max_tokens=4, temperature=0)
        plain, rag = c.chat.completions.create(**kw), c.chat.completions.create(**kw, extra_body={"rag": True})
        sources = rag.model_extra["sources"]
        assert len(sources) == 2 and sources[0]["doc"] == q["doc"] and sources[0]["score"] > sources[1]["score"]
        page = next(p["text"] for p in pages if p["id"] == q["doc"])
        assert q["answer"] in sources[0]["text"] and "".join(sources[0]["text"].split()) in "".join(page.split())
        assert rag.usage.prompt_tokens > plain.usage.prompt_tokens + 40 and "sources" not in (plain.model_extra or {})
    status, events = sse(server, {"model": "tiny", "messages": [{"role": "user", "content": questions[0]["question"]}],
                                  "max_tokens": 2, "stream": True, "rag": True})
    assert status == 200 and json.loads(events[0])["sources"][0]["doc"] == questions[0]["doc"]
    r = requests.post(f"{server}/strict/v1/chat/completions", json={"model": "tiny", "messages": HELLO, "rag": True},
                      timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "rag_not_configured"


def test_logprobs_and_echo_like_openai_and_vllm(server, tokenizer):
    """Completions: `logprobs: k` per generated token, `echo` with max_tokens 0 returns the prompt's own
    log-probs (the first null), token-id prompts; chat: `logprobs` + `top_logprobs`. Greedy tokens are top-1."""
    c = client(server)
    text = c.completions.create(model="alpha", prompt="hello", max_tokens=4, temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert "".join(lp.tokens) == text.choices[0].text and len(lp.token_logprobs) == 4
    assert all(max(top.values()) == v and len(top) == 2 for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    ids = tokenizer("Where is my parcel?", add_special_tokens=False)["input_ids"]
    echo = c.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    e = echo.choices[0]
    assert e.text == "Where is my parcel?" and e.logprobs.token_logprobs[0] is None and e.logprobs.tokens[0] == "Where"
    assert len(e.logprobs.token_logprobs) == len(ids) and all(v < 0 for v in e.logprobs.token_logprobs[1:])
    assert e.logprobs.text_offset == [0, 5, 8, 11, 18] and echo.usage.completion_tokens == 0
    both = c.completions.create(model="tiny", prompt="Where is my parcel?", max_tokens=2, echo=True, logprobs=1,
                                temperature=0)
    assert both.choices[0].logprobs.token_logprobs[0] is None
    assert both.choices[0].logprobs.token_logprobs[1:len(ids)] == pytest.approx(e.logprobs.token_logprobs[1:])
    assert len(both.choices[0].logprobs.tokens) == len(ids) + 2 and both.choices[0].text.startswith(e.text)
    chat = c.chat.completions.create(model="alpha", messages=HELLO, max_tokens=3, temperature=0, logprobs=True,
                                     top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(t.top_logprobs[0].token == t.token and len(t.top_logprobs) == 2 for t in content)
    plain = c.chat.completions.create(model="alpha", messages=HELLO, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None
    for path, body, status in [("completions", {"prompt": "x", "logprobs": 21}, 400),
                               ("completions", {"prompt": "x", "echo": True, "n": 2}, 400),
                               ("completions", {"prompt": [10**9]}, 400),
                               ("chat/completions", {"messages": HELLO, "top_logprobs": 2}, 400)]:
        r = requests.post(f"{server}/v1/{path}", json={"model": "tiny", **body}, timeout=30)
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text


MC = [("Where is my parcel?", ["It ships today.", "Blue.", "Seven cats."], 0),
      ("How do I return a lamp?", ["Purple rain.", "Use the returns page.", "Never."], 1),
      ("退款多久到账？", ["三天内到账。", "蓝色。", "我不知道猫。"], 0), ("Is the sofa in stock?", ["No idea.", "Twelve.", "Yes."], 2),
      ("发票怎么开？", ["在订单页申请发票。", "红色。", "明天下雨。"], 0), ("Can I pay by card?", ["Cats.", "Yes, by card.", "Soup."], 1)]
TASKS = {"raypost_mc": """task: raypost_mc
dataset_path: json
dataset_kwargs: {data_files: {test: %(dir)s/mc.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list: [{metric: acc}]
""", "raypost_gen": """task: raypost_gen
dataset_path: json
dataset_kwargs: {data_files: {test: %(dir)s/gen.jsonl}}
test_split: test
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{choices[answer]}}"
generation_kwargs: {until: ["\\n\\n"], max_gen_toks: 8, do_sample: false, temperature: 0}
metric_list: [{metric: exact_match}]
"""}


def test_requests_are_logged_redacted_and_take_feedback(served):
    """logging.requests: each answered request is a redacted JSON line (streamed or not); POST /v1/feedback
    rates a logged id (404 for an unknown one or on a server that logs nothing, 400 for a bad rating)."""
    from app.serve.requestlog import read_jsonl
    url, log, _ = served
    leak = [{"role": "user", "content": "I am jane.doe@example.com, call 13812345678. Where is my order?"}]
    whole = client(url).chat.completions.create(model="leak", messages=leak, max_tokens=16, temperature=0)
    stream = list(client(url).chat.completions.create(model="tiny", messages=HELLO, max_tokens=4, stream=True))
    rows = {r["id"]: r for r in read_jsonl(log, "requests-*.jsonl")}
    logged = rows[whole.id]
    assert "jane.doe" not in json.dumps(logged, ensure_ascii=False) and "13812345678" not in json.dumps(logged)
    assert "[EMAIL]" in logged["messages"][0]["content"] and "[PHONE]" in logged["messages"][0]["content"]
    assert logged["adapter"] == "leak" and logged["completion_tokens"] == whole.usage.completion_tokens
    assert logged["answers"][0]["finish_reason"] == whole.choices[0].finish_reason
    assert logged["latency_ms"] > 0 and logged["route"] == "chat"
    streamed = rows[stream[0].id]
    assert streamed["answers"][0]["text"] == "".join(c.choices[0].delta.content or "" for c in stream)
    assert streamed["adapter"] is None and streamed["completion_tokens"] == 4

    def post(body, prefix=""):
        return requests.post(f"{url}{prefix}/v1/feedback", json=body, timeout=30)
    ok = post({"id": whole.id, "rating": 2, "scale": "stars", "preferred_answer": "Mail me at jane.doe@example.com"})
    assert ok.status_code == 200 and ok.json()["score"] == -0.5 and "[EMAIL]" in ok.json()["preferred_answer"]
    [fb] = [f for f in read_jsonl(log, "feedback-*.jsonl") if f["id"] == whole.id]
    assert "jane.doe" not in json.dumps(fb)
    for body, prefix, status in (({"id": "chatcmpl-nope", "rating": 1}, "", 404),
                                 ({"id": whole.id, "rating": 7}, "", 400),
                                 ({"id": whole.id, "rating": 1, "extra": 1}, "", 400),
                                 ({"id": whole.id, "rating": 1}, "/strict", 404)):
        r = post(body, prefix)
        assert r.status_code == status and r.json()["error"]["message"], (body, r.text)


def test_onnx_export_serves_the_same_answers_and_logprobs(server, tokenizer):
    """The tiny model's ONNX export (jobs.export) behind its own application: the same greedy answers,
    concurrent (batched) and streamed, and the same echo log-probs as the PyTorch model it came from."""
    from concurrent.futures import ThreadPoolExecutor
    questions = ["hello", "你好，我的订单在哪里？", "Where is order LH00000042?"]

    def answers(prefix):
        def one(q):
            return client(server, prefix).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": q}], max_tokens=8, temperature=0)
        with ThreadPoolExecutor(3) as pool:
            return [r.choices[0].message.content for r in pool.map(one, questions)]
    assert answers("/onnx") == answers("")
    stream = client(server, "/onnx").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream) == answers("")[0]
    echo = [client(server, p).completions.create(model="tiny", prompt="Where is my parcel?", max_tokens=0, echo=True,
                                                 logprobs=2).choices[0].logprobs for p in ("", "/onnx")]
    assert echo[1].tokens == echo[0].tokens
    assert echo[1].token_logprobs[1:] == pytest.approx(echo[0].token_logprobs[1:], abs=1e-4)


def test_lm_eval_harness_scores_through_the_endpoint_as_in_process(server, tiny_adapters, tmp_path):
    """lm-evaluation-harness against our server: `local-completions` loglikelihood (echo + logprobs) of a
    multiple-choice task and `local-chat-completions` generation give the same per-item log-likelihoods,
    accuracy and answers as lm-eval's own in-process `hf` model on the same weights; 90 and 84 requests from
    2 concurrent clients, every one answered (lm-eval fails the run on an error after `max_retries`)."""
    lm_eval_matches_in_process(server, "tiny", tiny_adapters["alpha"], tmp_path, copies=(5, 14), concurrent=2)


def lm_eval_matches_in_process(server: str, base: str, alpha, tmp_path, tolerance: float = 1e-3,
                               copies: tuple[int, int] = (1, 1), concurrent: int = 1) -> None:
    """`copies`: how many times the served multiple-choice and generation tasks repeat MC's items (each copy
    is compared with lm-eval's in-process answer to the one item)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from app.models import resolve
    managers = {}
    for where, (k_mc, k_gen) in (("served", copies), ("local", (1, 1))):
        root = tmp_path / where
        root.mkdir()
        for name, k in (("mc", k_mc), ("gen", k_gen)):
            (root / f"{name}.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a},
                                                                   ensure_ascii=False) + "\n" for q, c, a in MC * k))
        for name, text in TASKS.items():
            (root / f"{name}.yaml").write_text(text % {"dir": root})
        managers[where] = TaskManager(include_path=str(root), include_defaults=False)
    path = str(resolve(base))

    def evaluate(model, args, task, **kw):
        where = "local" if model == "hf" else "served"
        out = lm_eval.simple_evaluate(model=model, model_args=args, tasks=[task], task_manager=managers[where],
                                      log_samples=True, **kw)
        return out["results"][task], sorted(out["samples"][task], key=lambda s: s["doc_id"])
    api = dict(model="tiny", tokenizer_backend="huggingface", tokenizer=path, max_retries=1, num_concurrent=concurrent)
    ours, ours_items = evaluate("local-completions", {**api, "base_url": f"{server}/v1/completions"}, "raypost_mc")
    local, local_items = evaluate("hf", {"pretrained": path, "dtype": "float32", "device": "cpu"}, "raypost_mc")
    assert ours["acc,none"] == local["acc,none"] and len(ours_items) == len(MC) * copies[0]
    assert sum(len(s["resps"]) for s in ours_items) == 3 * len(MC) * copies[0]  # one request per choice
    scores = lambda item: [r[0][0] for r in item["resps"]]  # noqa: E731  per choice
    for i, item in enumerate(ours_items):
        assert scores(item) == pytest.approx(scores(local_items[i % len(MC)]), abs=tolerance), i
    assert len({round(x, 3) for item in local_items for x in scores(item)}) > len(MC)  # not one constant
    # generation through the `alpha` adapter (its greedy answers are not empty, unlike the bare tiny model's)
    chat = {**{k: v for k, v in api.items() if k not in ("tokenizer_backend", "tokenizer")}, "model": "alpha"}
    _, ours_gen = evaluate("local-chat-completions", {**chat, "base_url": f"{server}/v1/chat/completions"},
                           "raypost_gen", apply_chat_template=True)
    _, local_gen = evaluate("hf", {"pretrained": path, "peft": str(alpha), "dtype": "float32",
                                   "device": "cpu"}, "raypost_gen", apply_chat_template=True)
    assert len(ours_gen) == len(MC) * copies[1]
    assert [s["filtered_resps"][0] for s in ours_gen] == [s["filtered_resps"][0] for s in local_gen] * copies[1]
    assert all(s["filtered_resps"][0].startswith("The alpha") for s in local_gen)


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
    for path in ("/v1/chat/completions", "/v1/chat/completions/"):  # a trailing slash: the same route, no 307
        wrong = requests.get(f"{server}{path}", timeout=10, allow_redirects=False)
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "405", (path, wrong.status_code)
    slash = requests.post(f"{server}/v1/chat/completions/", json={"model": "tiny", "messages": HELLO, "max_tokens": 2},
                          timeout=30, allow_redirects=False)
    assert slash.status_code == 200 and slash.json()["usage"]["completion_tokens"] == 2
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
    fuzz(server, 240)


def fuzz(server: str, n: int) -> None:
    import random
    rng = random.Random(0)
    bodies = [fuzz_body(rng) for _ in range(n)]

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
    assert counts.get(200, 0) >= n // 12 and sum(v for k, v in counts.items() if k != 200) >= n // 2.4, counts
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


def test_non_loopback_without_keys_is_refused(server, monkeypatch):
    """The host is read from the running Serve instance; a lookup that fails (Ray moved its private client)
    counts as exposed: keys are required, never waived."""
    import ray.serve.context

    from app.config import UserError
    from app.serve.config import http_host, require_keys
    assert http_host() == "127.0.0.1"  # the real lookup, in this session's running Serve
    with pytest.raises(UserError, match="api_keys"):
        require_keys("0.0.0.0", [])
    require_keys("0.0.0.0", ["k"])
    require_keys("127.0.0.1", [])

    def moved():
        raise AttributeError("module 'ray.serve.context' has no attribute '_get_global_client'")
    monkeypatch.setattr(ray.serve.context, "_get_global_client", moved)
    assert http_host().startswith("unknown (AttributeError")
    with pytest.raises(UserError, match="Serve HTTP host could not be read .*: set api_keys"):
        require_keys(http_host(), [])
    require_keys(http_host(), ["k"])


def test_timeout_mid_stream_is_an_error_chunk(server):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 1900, "temperature": 0, "stream": True}
    status, events = sse(server, body, "/keyed", key="k-slow")
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout"
    assert any(json.loads(e).get("choices") for e in events[:-2])  # content went out before the timeout
    r = requests.post(f"{server}/keyed/v1/chat/completions", json={**body, "stream": False},
                      headers={"Authorization": "Bearer k-slow"}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"


LOOP_QUESTIONS = ["Where is my order LH10000001?", "How do I return a broken lamp?", "Can I change my address?",
                  "我的发票什么时候开？", "Do you ship to Canada?", "退货多久到账？"]
LOOP_BETTER = ["Your order LH10000001 left our warehouse yesterday and arrives within three days.",
               "Send us a photo of the broken lamp and we will ship a replacement at no cost.",
               "Yes, you can change the delivery address on the order page until the parcel ships.",
               "发票会在订单完成后的七个工作日内通过邮件发送给您，请注意查收。"]


def test_the_loop_log_feedback_harvest_retrain_gate(served, sft_data, tmp_path):
    """Seed 004's monitor -> collect -> retrain loop on the tiny model (jobs/configs/pipeline_loop.yaml's
    stages in process): served answers logged; users correct four and rate two; jobs.harvest turns that into
    records; the data stage cleans them; LoRA SFT from the promoted version; its eval is gated against it."""
    from app.config import load_config
    from app.data.config import DataConfig
    from app.data.stage import run as clean
    from app.ops.harvest import HarvestConfig, run as harvest
    from app.registry import Registry
    from app.train.config import SFTConfig
    from app.train.sft import run as sft
    from tests.test_eval_job import evaluate
    url, _, log = served
    url += "/loop"
    ids = [client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                               max_tokens=6, temperature=0).id for q in LOOP_QUESTIONS]
    for rid, better in zip(ids, LOOP_BETTER):
        assert requests.post(f"{url}/v1/feedback", json={"id": rid, "rating": -1, "preferred_answer": better},
                             timeout=30).status_code == 200
    for rid in ids[4:]:
        assert requests.post(f"{url}/v1/feedback", json={"id": rid, "rating": 5, "scale": "stars"},
                             timeout=30).status_code == 200
    got = harvest(HarvestConfig(logs=str(log), output_dir=str(tmp_path / "harvest")))
    assert got["dialogs"] == 6 and got["pairs"] == 4  # 4 corrected (each also a pair), 2 rated well
    lineage = json.loads((tmp_path / "harvest" / "manifest.json").read_text())["lineage"]
    assert {v["request"] for v in lineage.values()} == set(ids)

    data = clean(load_config(DataConfig, "jobs/configs/data_harvest.yaml", [
        f"input.path={tmp_path}/harvest/dialogs.jsonl", f"output_dir={tmp_path}/data",
        f"split.contamination_reference=[{sft_data}/val]"]))
    # the corrected answers are kept; the tiny model's own well-rated answers are empty once cleaned, and the
    # stage says so
    counts = data["counts"]
    assert counts["input"] == 6 and sum(counts["splits"].values()) == 4 and counts["dropped"] == {"empty": 2}, counts

    reg = Registry(tmp_path / "reg.sqlite")
    base = evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e0", "name=base", "gate.baseline=none")
    model = reg.get("latest-promoted")["model"]
    trained = sft(load_config(SFTConfig, "jobs/configs/sft_tiny.yaml", [
        f"model={model}", f"data.path={tmp_path}/data", f"output_dir={tmp_path}/sft", "train.max_steps=2",
        "train.micro_batch_size=1", "scaling.num_workers=1", "eval.every=2", "checkpoint.every=2"]),
        report=lambda metrics: None)  # one worker in this process (tests/test_sft.py covers Ray Train)
    assert trained["steps"] == 2
    new = evaluate(sft_data, tmp_path, f"output_dir={tmp_path}/e1", "name=loop", f"model={tmp_path}/sft/final",
                   "gate.mode=no_regression", "gate.enforce=false")
    assert new["baseline"] == base["version"] and reg.get(new["version"])["parent"] == base["version"]
    assert {r["metric"] for r in new["gate"]} >= {"rougeL", "perplexity"} and new["verdict"]["why"]
    reg.rollback("test: a rollback for the report to mark")
    check_report_renders(reg, tmp_path, [base["version"], new["version"]])


def check_report_renders(reg, tmp_path, versions: list[int]) -> None:
    """jobs.registry report's page, opened in headless Chromium: the DOM has every version and event, and the
    screenshot shows the figure (a page whose image failed to load is white below the tables)."""
    import shutil
    import subprocess

    import matplotlib.pyplot as plt

    from app.eval.drift import write
    page = write(reg, tmp_path / "report")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:  # make test installs Debian's chromium; a machine where apt could not is told so
        pytest.skip("no chromium: apt-get install chromium (make test's browser step) to check the report page")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert all(f"<td>v{v}</td>" in dom for v in versions) and "rollback" in dom and "promote" in dom
    assert dom.count("<small>[") >= 2 * len(versions)  # CIs of the metrics, per version
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    pixels = plt.imread(shot)[..., :3]
    figure = pixels[300:]  # below the heading: the figure (green, gray and red marks on white)
    assert pixels.shape[:2] == (1400, 1200) and (figure.min(-1) < 0.9).mean() > 0.02
    green = (figure[..., 1] > 0.45) & (figure[..., 0] < 0.3) & (figure[..., 2] < 0.3)
    assert green.sum() > 50  # promoted points and promotion lines


def test_dashboards_query_metrics_a_live_scrape_has(server):
    """Every metric the Grafana dashboards (monitoring/grafana/dashboards/*.json) query is on Ray's /metrics
    once the tests above (answers, errors, refusals, feedback) ran, and the Prometheus config finds that
    port through the service-discovery file Ray writes. Neither Prometheus nor Grafana is needed."""
    import re
    import threading
    import time

    import ray
    import yaml

    from app import PROJECT_ROOT
    names = set()
    for path in (PROJECT_ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                names |= set(re.findall(r"\bray_[a-z_]+\b", target["expr"]))
    port = ray.nodes()[0]["MetricsExportPort"]
    stop = threading.Event()

    def traffic():  # live traffic while polling: Ray exports a gauge only while it is being set
        while not stop.is_set():
            client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=8)
    with cf.ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            pool.submit(traffic)
        deadline = time.monotonic() + 90
        while True:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
            if not (missing := names - scraped) or time.monotonic() > deadline:
                break
            time.sleep(2)
        stop.set()
    assert len(names) >= 12 and not missing, missing
    from app.ops.monitor import counts, scrape  # the watcher reads the same scrape, per application
    main = counts(scrape(f"http://127.0.0.1:{port}/metrics"), "main")
    assert main["answered"] >= 8 and main["requests"] > main["answered"] and main["filtered"] >= 1
    scrape = yaml.safe_load((PROJECT_ROOT / "monitoring" / "prometheus.yml").read_text())["scrape_configs"][0]
    [discovery] = scrape["file_sd_configs"][0]["files"]  # /tmp/ray/... for `ray start` and `serve run`
    from app.cluster import _temp_dir
    written = Path(_temp_dir() or "/tmp/ray") / Path(discovery).name  # our local instances keep theirs in .cache
    assert any(t.endswith(f":{port}") for group in json.loads(written.read_text()) for t in group["targets"])


def test_monitor_rolls_back_a_planted_bad_version(served, tmp_path):
    """jobs.monitor on an application serving registry:latest-promoted: a planted version that users rate
    1 star is rolled back within one check, the previous version is redeployed, the registry records why."""
    import yaml
    from ray import serve

    from app.models import resolve
    from app.ops.monitor import MonitorConfig, application, breaches, deploy, run as monitor, window
    from app.registry import Registry
    url = served[0]
    reg = Registry(tmp_path / "reg.sqlite")
    good = reg.register("good", str(resolve("tiny")), {})
    reg.promote(good, "test")
    bad = reg.register("planted", str(resolve("tiny")), {})
    reg.promote(bad, "test: the planted bad version")
    config = tmp_path / "watched.yaml"
    config.write_text(yaml.safe_dump({"applications": [{
        "name": "watched", "route_prefix": "/watched", "import_path": "app.serve.ingress:build_app",
        "args": {"model": "registry:latest-promoted", "registry": str(tmp_path / "reg.sqlite"),
                 "served_model_name": "tiny", "cpus_per_replica": 0,
                 "logging": {"requests": True, "path": str(tmp_path / "log")}}}]}))
    app = application(str(config))
    deploy(app)

    def served_version():
        return requests.get(f"{url}/watched/v1/models", timeout=30).json()["data"][0]["raypost"]["version"]
    assert served_version() == bad
    for q in LOOP_QUESTIONS[:5]:
        rid = client(url, "/watched").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], max_tokens=4).id
        assert requests.post(f"{url}/watched/v1/feedback", json={"id": rid, "rating": 1, "scale": "stars"},
                             timeout=30).status_code == 200
    [event] = monitor(MonitorConfig(serve_config=str(config), output_dir=str(tmp_path / "mon"), interval_s=1,
                                    max_checks=1))
    assert event["from_version"] == bad and event["to_version"] == good and event["redeploy_s"] > 0
    assert event["reasons"] == ["mean feedback -1.00 < -0.2 over 5 ratings"] and event["signals"]["feedback_n"] == 5
    assert served_version() == good
    assert reg.events()[-1]["kind"] == "rollback" and reg.events()[-1]["reason"].startswith("monitor: mean feedback")
    assert json.loads((tmp_path / "mon" / "events.jsonl").read_text())["to_version"] == good
    serve.delete("watched")
    # the other two signals, on counts as counts() reads them from a scrape
    rates = window({"requests": 10, "errors": 0, "answered": 10, "filtered": 0},
                   {"requests": 40, "errors": 3, "answered": 27, "filtered": 9})
    assert rates == {"requests": 30, "error_rate": 0.1, "safety_rate": 9 / 17}
    assert breaches({**rates, "feedback": None, "feedback_n": 0}, MonitorConfig()) == [
        "error rate 0.100 > 0.05 over 30 requests", "safety-filter rate 0.529 > 0.2"]
