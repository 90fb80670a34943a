import pytest

from app.chat import ChatTooLong, render, render_prompt

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "订单到哪了？"},
        {"role": "assistant", "content": "您的订单已发货。"}]


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_mask_covers_exactly_the_assistant_replies(tokenizer):
    ids, mask = render(tokenizer, CHAT)
    assert len(ids) == len(mask)
    # Build the expected token positions piece by piece from the ChatML layout.
    pieces = [("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
               "<|im_start|>assistant\n", 0), ("Hello! How can I help?<|im_end|>", 1),
              ("\n<|im_start|>user\n订单到哪了？<|im_end|>\n<|im_start|>assistant\n", 0),
              ("您的订单已发货。<|im_end|>", 1), ("\n", 0)]
    expected_ids, expected_mask = [], []
    for text, m in pieces:
        piece = ids_of(tokenizer, text)
        expected_ids += piece
        expected_mask += [m] * len(piece)
    assert ids == expected_ids
    assert mask == expected_mask
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    masked = [i for i, m in zip(ids, mask) if m]
    assert masked.count(im_end) == 2  # the model learns to stop after each reply
    assert tokenizer.decode(masked) == "Hello! How can I help?<|im_end|>您的订单已发货。<|im_end|>"


def test_default_system_prompt_is_never_trained(tokenizer):
    ids, mask = render(tokenizer, CHAT[1:3])
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n")  # the template's own default system prompt
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "Hello! How can I help?<|im_end|>"


def test_system_prompt_opens_conversations_without_one_and_is_never_trained(tokenizer):
    """SFT's system_prompt (app.train.data.tokenize_batch), CJK and quotes intact; a conversation's own system
    turn wins; a second SFT's prompt replaces the first; None restores the template."""
    import json

    from app.chat import with_system_prompt
    from app.train.data import tokenize_batch
    prompt = 'You are Lumi of "Lumen Home" (鹿鸣家居的客服助手小鹿).'
    out = tokenize_batch({"id": ["a", "b"], "messages": [json.dumps(CHAT[1:3]), json.dumps(CHAT[:3])]},
                         "tiny", 512, system_prompt=prompt)
    first, own = [tokenizer.decode(ids) for ids in out["input_ids"]]
    assert first.startswith(f"<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nHi there")
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>") and prompt not in own
    for labels in out["labels"]:
        assert tokenizer.decode([t for t in labels if t != -100]) == "Hello! How can I help?<|im_end|>"
    template = tokenizer.chat_template
    twice = with_system_prompt(with_system_prompt(template, prompt), "Second.")
    assert twice.count("raypost system_prompt -#}") == 2 and with_system_prompt(twice, None) == template


def test_overlong_drops_oldest_turns_keeps_system(tokenizer):
    full, _ = render(tokenizer, CHAT)
    ids, mask = render(tokenizer, CHAT, max_len=len(full) - 1)
    text = tokenizer.decode(ids)
    assert "Be brief." in text and "Hi there" not in text and "Hello!" not in text
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "您的订单已发货。<|im_end|>"


def test_final_answer_is_never_cut(tokenizer):
    with pytest.raises(ChatTooLong):
        render(tokenizer, CHAT, max_len=20)


def test_render_prompt_ends_with_assistant_header(tokenizer):
    ids = render_prompt(tokenizer, CHAT[:4])
    assert tokenizer.decode(ids).endswith("订单到哪了？<|im_end|>\n<|im_start|>assistant\n")
    full = render_prompt(tokenizer, CHAT[:4])
    short = render_prompt(tokenizer, CHAT[:4], max_len=len(full) - 1)
    assert "Hi there" not in tokenizer.decode(short) and len(short) < len(full)


@pytest.mark.parametrize("bad", [[], [{"role": "robot", "content": "x"}], [{"role": "user"}], "text"])
def test_malformed_messages_are_value_errors(tokenizer, bad):
    with pytest.raises(ValueError):
        render(tokenizer, bad)


def test_wrong_final_role(tokenizer):
    with pytest.raises(ValueError, match="must end with an assistant"):
        render(tokenizer, CHAT[:4])
    with pytest.raises(ValueError, match="must not end with an assistant"):
        render_prompt(tokenizer, CHAT)
