"""Explanations (app/eval/explain.py): integrated gradients through captum and attention rollout on the tiny
model, the CJK font the heatmap draws with, and jobs.explain's files."""
from __future__ import annotations

import json

import pytest
import torch


def test_integrated_gradients_complete_to_the_log_prob_gain_and_rollout_is_stochastic(tiny):
    """IG's completeness: the first answer token's attributions over the prompt sum to log p(token | prompt)
    minus log p(token | the baseline: token 0 at every position); rollout rows are distributions over the positions."""
    from app.chat import render_prompt
    from app.eval.explain import attention_rollout, integrated_gradients
    model, tok = tiny
    model.set_attn_implementation("eager")
    prompt = render_prompt(tok, [{"role": "user", "content": "退货要多久？ How long is a return?"}])
    answer = tok("Three days.", add_special_tokens=False)["input_ids"]
    ig = integrated_gradients(model, tok, prompt, answer, steps=64)
    assert ig.shape == (len(answer), len(prompt))
    with torch.no_grad():
        real = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], -1)[answer[0]]
        baseline = torch.zeros(1, len(prompt), dtype=torch.long)  # captum's baseline: token 0 everywhere
        base = torch.log_softmax(model(input_ids=baseline).logits[0, -1], -1)[answer[0]]
    assert float(ig[0].sum()) == pytest.approx(float(real - base), abs=2e-3)
    rollout = attention_rollout(model, prompt, answer)
    assert rollout.shape == (len(answer), len(prompt)) and bool((rollout >= 0).all())
    assert float(rollout[0].sum()) == pytest.approx(1.0, abs=1e-5)  # the last prompt position sees only the prompt
    assert bool((rollout[1:].sum(1) < 1).all())  # later rows also attend to the answer's own tokens


def test_explain_job_writes_json_and_a_cjk_legible_heatmap(tmp_path):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    from app.fonts import cjk_font
    from jobs.explain import JOB
    JOB.main(["model=tiny", "prompt=我的订单到哪了？", "max_new_tokens=4", "steps=4", f"output_dir={tmp_path}"])
    result = json.loads((tmp_path / "explanation.json").read_text())
    assert len(result["answer_tokens"]) == 4 and len(result["integrated_gradients"]) == 4
    # labels are what each token adds to the text: a CJK character's leading byte pieces show "…"
    assert "".join(t for t in result["prompt_tokens"] if t != "…").endswith("user\n我的订单到哪了？<|im_end|>\n"
                                                                           "<|im_start|>assistant\n")
    assert result["prompt_tokens"].count("…") >= 3
    assert (tmp_path / "explanation.png").stat().st_size > 10_000
    font = FT2Font(font_manager.findfont(cjk_font(), fallback_to_default=False))
    assert all(font.get_char_index(ord(c)) for c in "我的订单到哪了退款")  # glyphs, not empty boxes
    with pytest.raises(SystemExit):  # a bad key: one line, exit 2
        JOB.main(["model=tiny", "prompt=x", "stepz=4"])
