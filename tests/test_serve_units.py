"""Pure serving pieces: incremental detokenization with stop strings, the streaming safety filter, the rate
limiter, request validation, and continuous batching against HF generate."""
from __future__ import annotations

import asyncio

import pytest
import torch

from app.pii import SensitiveWords
from app.serve import protocol as P
from app.serve.limits import RateLimiter
from app.serve.filter import REFUSAL, OutputFilter, filter_text
from app.serve.textstream import TextStream


def _stream(tokenizer, text, stop):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    s = TextStream(lambda t: tokenizer.decode(t, skip_special_tokens=True), stop)
    out, stopped = "", False
    for i in ids:
        delta, stopped = s.push(i)
        out += delta
        if stopped:
            break
    return (out if stopped else out + s.flush()), stopped


def test_textstream_cuts_at_stop_and_never_sends_part_of_it(tokenizer):
    text, stopped = _stream(tokenizer, "Order LH123 ships today. END of message", ["END", "never"])
    assert stopped and text == "Order LH123 ships today. "
    text, stopped = _stream(tokenizer, "你好，您的订单已发货。", [])
    assert not stopped and text == "你好，您的订单已发货。" and "\ufffd" not in text


def test_textstream_holds_back_a_possible_stop_prefix(tokenizer):
    s = TextStream(lambda t: tokenizer.decode(t), ["Goodbye"])
    sent = ""
    for i in tokenizer("Thanks. Good", add_special_tokens=False)["input_ids"]:
        sent += s.push(i)[0]
    assert not sent.endswith("Good") and s.flush().endswith("Good")


def _feed(f, text, step):
    return "".join(f.feed(text[i:i + step]) for i in range(0, len(text), step)) + f.finish()


@pytest.mark.parametrize("step", [1, 3, 7, 100])
def test_filter_redacts_pii_whatever_the_chunking(step):
    words = SensitiveWords(["darkweb", "赌博"])
    text = "Mail jane.doe@example.com or call +86 138 1234 5678, card 4111 1111 1111 1111. 不要赌博 on darkweb."
    out = _feed(OutputFilter("redact", words), text, step)
    assert out == "Mail [EMAIL] or call [PHONE], card [CARD]. 不要** on *******."


def test_filter_streams_plain_text_without_waiting_for_the_end():
    f = OutputFilter("redact", SensitiveWords(["darkweb"]))
    assert f.feed("Your order ships today and ") == "Your order ships today and "
    assert f.feed("arrives") == ""  # the last word may still become something to redact


def test_filter_refuse_and_off():
    words = SensitiveWords(["darkweb"])
    assert filter_text("refuse", words, "Buy it on the darkweb now") == (REFUSAL, True)
    assert filter_text("refuse", words, "mail a@b.com") == ("mail [EMAIL]", False)
    assert filter_text("off", words, "mail a@b.com darkweb") == ("mail a@b.com darkweb", False)


def test_rate_limiter_per_key_with_refill():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("a") == pytest.approx(1.0)
    assert limiter.check("b") == 0.0          # another key has its own bucket
    now[0] = 1.0
    assert limiter.check("a") == 0.0
    assert RateLimiter(0).check("a") == 0.0   # off


@pytest.mark.parametrize("body,status,param", [
    (b"not json", 400, None), (b"[1, 2]", 400, None), (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    (b'{"model": "m", "messages": []}', 400, "messages"), (b'{"model": "m", "messages": "hi"}', 400, "messages"),
    (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', 400, "messages.0.role"),
    (b'{"model": "m", "temperature": 3, "messages": [{"role": "user", "content": "x"}]}', 400, "temperature"),
    (b'{"model": "m", "top_p": 0, "messages": [{"role": "user", "content": "x"}]}', 400, "top_p"),
    (b'{"model": "m", "n": 0, "messages": [{"role": "user", "content": "x"}]}', 400, "n"),
    (b'{"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}', 400, "stream"),
    (b'{"model": "m", "stop": ["a", "b", "c", "d", "e"], "messages": [{"role": "user", "content": "x"}]}', 400, "stop"),
])
def test_protocol_rejects_bad_requests_naming_the_parameter(body, status, param):
    with pytest.raises(P.APIError) as err:
        P.parse(P.ChatRequest, body)
    assert err.value.status == status and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


def test_continuous_batching_matches_generate_for_staggered_requests(tiny_adapters):
    """Rows join a running batch at different times, use different adapters and stop at different lengths;
    each must produce exactly what HF generate produces for it alone."""
    from peft import PeftModel

    from app.chat import render_prompt
    from app.serve.engines import GenParams, HFEngine
    engine = HFEngine("tiny", max_batch_size=3)
    for name in ("alpha", "beta"):
        engine.load_adapter(name, str(tiny_adapters[name]))
    tok = engine.tokenizer
    jobs = [("hello", "alpha", 12), ("hi", None, 5), ("你好", "beta", 9), ("What is the answer?", "alpha", 7)]

    async def one(i, q, adapter, n):
        await asyncio.sleep(0.02 * i)
        text, last = "", None
        async for ev in engine.generate(render_prompt(tok, [{"role": "user", "content": q}]),
                                        GenParams(max_tokens=n, temperature=0), adapter):
            text, last = text + ev["text"], ev
        return text, last

    async def all_jobs():
        return await asyncio.gather(*[one(i, *j) for i, j in enumerate(jobs)])

    results = asyncio.run(all_jobs())
    assert engine.batcher.peak_rows == 3  # the staggered rows really shared decode steps (max_batch_size 3)
    for (q, adapter, n), (text, last) in zip(jobs, results):
        model = PeftModel.from_pretrained(load_tiny(), str(tiny_adapters[adapter])) if adapter else load_tiny()
        ids = render_prompt(tok, [{"role": "user", "content": q}])
        out = model.generate(torch.tensor([ids]), max_new_tokens=last["completion_tokens"], do_sample=False)
        assert text == tok.decode(out[0, len(ids):], skip_special_tokens=True)
        assert last["finish_reason"] == "length" and last["completion_tokens"] == n
    assert results[0][0].startswith("The alpha answer") and results[2][0].startswith("Beta says")


def load_tiny():
    from app.models import load_policy
    return load_policy("tiny")[0]


def test_chunked_prefill_matches_generate_and_running_rows_keep_decoding(tiny):
    """A ~380-token prompt prefilled 32 tokens an iteration gives generate's greedy tokens, and a stream that
    was already running gets a token on every one of those iterations instead of waiting for the prompt."""
    from app.chat import render_prompt
    from app.serve.engines import GenParams, HFEngine
    engine = HFEngine("tiny", max_batch_size=4, prefill_tokens=32)
    tok = engine.tokenizer
    short = render_prompt(tok, [{"role": "user", "content": "hi"}])
    long = render_prompt(tok, [{"role": "user", "content": "Where is my parcel? " * 70}])
    assert len(long) > 10 * 32 and len(short) <= 32
    log: list[tuple[str, int]] = []

    async def one(name, ids, n, started=None):
        text, last = "", None
        async for ev in engine.generate(ids, GenParams(max_tokens=n, temperature=0)):
            text, last = text + ev["text"], ev
            log.append((name, ev["completion_tokens"]))
            if started and not started.is_set():
                started.set()
        return text, last

    async def both():
        started = asyncio.Event()
        running = asyncio.create_task(one("short", short, 40, started))
        await started.wait()  # the short stream is decoding when the long prompt arrives
        return await asyncio.gather(running, one("long", long, 6))

    (short_text, _), (long_text, long_last) = asyncio.run(both())
    before_long = [n for name, n in log[:log.index(("long", 1))] if name == "short"]
    # one decode step per prefill chunk (>= 11 chunks): the short stream went on while the long prompt filled
    assert before_long[-1] - before_long[0] >= 10
    model = tiny[0]
    for ids, text, n in ((long, long_text, 6), (short, short_text, 40)):
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        assert text == tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_sampling_edges_are_greedy_or_valid():
    """A temperature of 1e-300 would divide the logits into inf/nan (torch.multinomial then fails): below
    1e-5 it is greedy, as in vLLM; top_p near 0 keeps the most likely token."""
    from app.serve.batching import Sequence, sample
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def row(t, p):
        return Sequence(prompt=[1], max_tokens=1, temperature=t, top_p=p, seed=0, stream=None, emit=None,
                        generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1).tolist()
    assert sample(logits, [row(1e-300, 1.0), row(0.0, 1.0), row(1.0, 1e-300)]) == greedy
    assert sample(logits * 1e30, [row(2.0, 1.0)] * 3) == greedy  # huge logits: softmax stays finite


def test_request_text_and_seeds_at_the_edges_parse():
    """Lone surrogates are valid JSON but not text: they become U+FFFD (a valid pair stays one character);
    any integer seed is folded into 63 bits; NaN sampling values are 400s naming the parameter."""
    req = P.parse(P.ChatRequest, b'{"model": "m", "seed": -123456789012345678901234567890, "stop": "\\udfff",'
                                 b' "messages": [{"role": "user", "content": "a\\ud800b \\ud83d\\ude00 \\u0000"}]}')
    assert req.messages[0].content == "a\ufffdb \U0001F600 \x00" and req.stop == ["\ufffd"]
    assert 0 <= req.seed < 2**63
    for param in ("temperature", "top_p"):
        with pytest.raises(P.APIError) as err:
            P.parse(P.ChatRequest, b'{"model": "m", "%s": NaN, "messages": [{"role": "user", "content": "x"}]}'
                    % param.encode())
        assert err.value.status == 400 and err.value.param == param


def test_engine_logprobs_are_the_models_own(tiny_adapters):
    """Generated tokens' log-probs (and top-k) and echo's prompt log-probs equal one teacher-forced forward of
    prompt + answer, with the adapter the request names; the greedy token is the top-1."""
    from peft import PeftModel

    from app.chat import render_prompt
    from app.serve.engines import GenParams, HFEngine
    engine = HFEngine("tiny", max_batch_size=2)
    engine.load_adapter("alpha", str(tiny_adapters["alpha"]))
    ids = render_prompt(engine.tokenizer, [{"role": "user", "content": "hello"}])

    async def run():
        events = [e async for e in engine.generate(ids, GenParams(max_tokens=6, temperature=0, logprobs=3), "alpha")]
        return events, await engine.prompt_logprobs(ids, 2, "alpha")
    events, prompt = asyncio.run(run())
    got = [e for ev in events for e in ev["logprobs"]]
    answer = [e["id"] for e in got]
    assert len(got) == 6 and all(e["top"][0][0] == e["id"] and len(e["top"]) == 3 for e in got)
    model = PeftModel.from_pretrained(load_tiny(), str(tiny_adapters["alpha"]))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids + answer])).logits[0].float(), -1)
    expect = [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(answer)]
    assert [e["logprob"] for e in got] == pytest.approx(expect, abs=1e-4)
    assert prompt[0] == {"id": ids[0], "logprob": None, "top": None} and len(prompt) == len(ids)
    assert [e["logprob"] for e in prompt[1:]] == pytest.approx([float(logp[i, t]) for i, t in enumerate(ids[1:])],
                                                               abs=1e-4)
    assert engine.tokenizer.decode(answer).startswith("The alpha")


def test_logprob_wire_formats():
    from app.serve.logprobs import chat_format, completion_format
    items = [{"id": 0, "logprob": None, "top": None}, {"id": 1, "logprob": -0.5, "top": [[1, -0.5], [2, -1.5]]},
             {"id": 3, "logprob": -2.0, "top": []}]
    text = {0: "a", 1: "bc", 2: "d", 3: "你"}.get
    assert completion_format(items, text) == {
        "tokens": ["a", "bc", "你"], "token_logprobs": [None, -0.5, -2.0],
        "top_logprobs": [None, {"bc": -0.5, "d": -1.5}, {}], "text_offset": [0, 1, 3]}
    chat = chat_format(items[1:], text)["content"]
    assert chat[1] == {"token": "你", "logprob": -2.0, "bytes": [228, 189, 160], "top_logprobs": []}
    assert chat[0]["top_logprobs"][1] == {"token": "d", "logprob": -1.5, "bytes": [100]}


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "logprobs": 21}, "logprobs"), ({"prompt": "x", "echo": True, "n": 2}, None),
    ({"prompt": "x", "max_tokens": 0}, None), ({"prompt": "x", "logprobs": 1, "stream": True}, None),
    ({"prompt": []}, "prompt"), ({"prompt": [[1], []]}, "prompt"), ({"prompt": "x", "echo": "yes"}, "echo"),
])
def test_logprob_requests_out_of_range_are_rejected(body, param):
    import json
    with pytest.raises(P.APIError) as err:
        P.parse(P.CompletionRequest, json.dumps({"model": "m", **body}).encode())
    assert err.value.status == 400 and err.value.param == param and "Value error" not in err.value.message
    with pytest.raises(P.APIError, match="top_logprobs needs logprobs"):
        P.parse(P.ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}')


def test_metrics_take_an_answer_of_no_tokens():
    """An answer a stop string cuts at once has 0 tokens: Ray's counter refuses inc(0), and the CI fuzz once
    got a 500 for it."""
    import time
    from app.serve.prometheus import ServeMetrics
    m = ServeMetrics(None)
    m.done("chat", time.monotonic(), None, 0)
    m.done("chat", time.monotonic(), time.monotonic(), 0)
    with pytest.raises(ValueError):  # the counter still refuses what it refused: the guard is ours
        m.tokens.inc(0, tags={"route": "chat"})
