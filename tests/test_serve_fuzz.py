"""Property-based tests (hypothesis) of what a client controls: any JSON body is a validated request or a 4xx
with the OpenAI error envelope, never another exception; the text stream never sends a stop string or a
broken character, whatever the tokens. Pure: no Ray, no model (the tiny model's tokenizer only)."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.serve import protocol as P
from app.serve.textstream import TextStream

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop",
          "seed", "stream", "stream_options"]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", ""]) | JSON,
                                 "content": st.text() | JSON})
BODY = st.fixed_dictionaries({}, optional={f: JSON for f in FIELDS} | {
    "messages": st.lists(MESSAGE, max_size=3) | JSON, "model": st.just("m") | JSON})


@settings(max_examples=400, deadline=None)
@given(body=BODY, kind=st.sampled_from([P.ChatRequest, P.CompletionRequest]))
def test_any_body_is_a_request_or_a_4xx_with_the_envelope(body, kind):
    raw = json.dumps(body, allow_nan=True).encode()
    try:
        req = P.parse(kind, raw)
    except P.APIError as err:
        assert 400 <= err.status < 500 and set(err.body()["error"]) == {"message", "type", "param", "code"}
        return
    texts = [m.content for m in req.messages] if kind is P.ChatRequest else req.prompt
    for text in texts + (req.stop or []):  # what reaches the tokenizer encodes as UTF-8
        text.encode("utf-8")
    assert 0.0 <= req.temperature <= 2.0 and 0.0 < req.top_p <= 1.0 and (req.seed is None or 0 <= req.seed < 2**63)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 49151), max_size=24), stop=st.lists(st.text(min_size=1, max_size=3), max_size=2))
def test_text_stream_never_sends_a_stop_string_or_a_broken_character(tokenizer, ids, stop):
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    stream, sent, stopped = TextStream(decode, stop), "", False
    for token in ids:
        delta, stopped = stream.push(token)
        sent += delta
        if stopped:
            break
    if not stopped:
        sent += stream.flush()
    full = decode(ids)
    assert not any(s in sent for s in stop)
    if "\ufffd" in full:  # bytes that never formed a character: held back, never a broken one mid-text
        return
    if stopped:  # cut right before a stop string: the text up to it, nothing after
        assert full.startswith(sent) and any(full[len(sent):].startswith(s) for s in stop)
    else:
        assert sent == full and not any(s in full for s in stop)
