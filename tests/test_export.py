"""ONNX export (jobs.export, app/onnx.py): the graph on ONNX Runtime against PyTorch, token for
token and logit for logit, through the job's comparison, the eval sampler and the serving engine."""
from __future__ import annotations

import asyncio
import json

import pytest
import torch
from transformers import DynamicCache


def test_export_job_writes_the_graph_and_a_comparison_with_fp32_and_int8(tiny_onnx):
    out, result = tiny_onnx
    assert json.loads((out / "comparison.json").read_text()) == result
    assert sorted(p.name for p in (out / "model").glob("model.onnx*")) == ["model.onnx", "model.onnx.data"]
    assert result["prompts"] == 5 and result["greedy_equal"] == 5 and result["token_agreement"] == 1.0
    # one graph for prefill and decode: the weights are stored once (fp32 as PyTorch holds them)
    assert 0.95 < result["onnx"]["size_mb"] / result["pytorch_fp32"]["size_mb"] < 1.1
    for key in ("pytorch_fp32", "int8", "onnx"):
        assert result[key]["decode_tokens_per_s"] > 0
    assert result["faster_on_cpu"] == ("onnx" if result["onnx_speedup_vs_int8"] > 1 else "int8")
    assert "sha256" in json.loads((out / "manifest.json").read_text())


def test_onnx_model_matches_pytorch_on_a_left_padded_batch_and_a_chunked_prefill(tiny_onnx, tiny):
    from app.models import load_policy
    from app.onnx import OnnxCausalLM
    from app.sampler import positions
    onnx, tok = load_policy(str(tiny_onnx[0] / "model"))
    assert isinstance(onnx, OnnxCausalLM) and tok.chat_template
    model = tiny[0]
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    caches = [DynamicCache(), DynamicCache()]
    with torch.inference_mode():
        def both(**kw):
            return [m(**kw, cache=c).logits for m, c in zip((model, onnx), caches)]
        # a prompt in two chunks (the batcher's chunked prefill), then a one-token decode step
        pos = positions(mask)
        ref, got = both(input_ids=ids[:, :4], attention_mask=mask[:, :4], position_ids=pos[:, :4])
        real = mask[:, :4].bool()  # a padding position's logits mean nothing (and differ by attention kernel)
        assert torch.allclose(ref[real], got[real], atol=1e-4)
        ref, got = both(input_ids=ids[:, 4:], attention_mask=mask, position_ids=pos[:, 4:])
        assert torch.allclose(ref, got, atol=1e-4)
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        ref, got = both(input_ids=torch.tensor([[3], [4]]), attention_mask=step_mask,
                        position_ids=torch.tensor([[4], [7]]))
        assert torch.allclose(ref, got, atol=1e-4)
    assert caches[1].get_seq_length() == 8


def test_eval_sampler_and_serving_engine_answer_as_pytorch(tiny_onnx, tiny):
    """app.sampler (what jobs.eval answers with: batched, rows leave the cache as they end) and HFEngine's
    continuous batcher over the ONNX model give PyTorch's greedy tokens."""
    from app.chat import render_prompt
    from app.sampler import sample
    from app.serve.engines import GenParams, HFEngine
    model, tok = tiny
    onnx_dir = str(tiny_onnx[0] / "model")
    engine = HFEngine(onnx_dir)
    prompts = [render_prompt(tok, [{"role": "user", "content": c}])
               for c in ("hi", "你好，订单到哪了？", "x " * 30)]
    eos = {tok.eos_token_id, 17}  # an end token the tiny model does produce, so rows finish at different steps
    ref = sample(model, prompts, 10, eos, pad_id=tok.pad_token_id)["sequences"]
    got = sample(engine.model, prompts, 10, eos, pad_id=tok.pad_token_id)["sequences"]
    assert torch.equal(ref, got)

    async def answers(e):
        async def one(p):
            return "".join([ev["text"] async for ev in e.generate(p, GenParams(max_tokens=8, temperature=0))])
        return await asyncio.gather(*(one(p) for p in prompts))  # concurrent: batched rows
    assert asyncio.run(answers(engine)) == asyncio.run(answers(HFEngine("tiny")))


def test_onnx_export_with_adapters_or_vllm_is_refused_at_build(tiny_onnx):
    from app.config import UserError
    from app.serve.ingress import build_app
    from app.serve.config import ServeArgs
    with pytest.raises(UserError, match="ONNX export"):
        build_app(ServeArgs(model=str(tiny_onnx[0] / "model"), adapters={"a": "/nowhere"}))
