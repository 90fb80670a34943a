"""INT8 weight-only quantization: kernel accuracy, save/load round trip, the job's comparison, serving it."""
from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from app.int8 import Int8Linear, quantize_model, quantize_weight


def test_quantize_weight_per_channel_error_is_small():
    torch.manual_seed(0)
    w = torch.randn(32, 64) * torch.logspace(-2, 1, 32)[:, None]  # rows of very different scale
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (32,)
    rel = ((q.float() * scale[:, None] - w).abs().amax(1) / w.abs().amax(1))
    assert float(rel.max()) <= 0.5 / 127 + 1e-6  # half a step of each row's own scale


@pytest.mark.parametrize("rows", [3, 40])  # int8 weight-pack kernel below DENSE_ROWS, dequantized matmul from it
def test_int8_linear_matches_linear(rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(rows, 5, 64)
    y, yq = linear(x), Int8Linear.from_linear(linear)(x)
    assert yq.shape == y.shape and yq.dtype == y.dtype
    assert float((yq - y).abs().max()) < 0.05 * float(y.abs().max())


def test_int8_paths_agree_row_for_row():
    from app.int8 import DENSE_ROWS
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 48))
    x = torch.randn(DENSE_ROWS + 4, 64)
    few = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])  # one row at a time: the kernel
    assert float((layer(x) - few).abs().max()) < 0.02 * float(few.abs().max())  # bf16 rounding apart


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tokenizer):
    from app.compress.quantize import QuantizeConfig, run
    root = tmp_path_factory.mktemp("quant")
    data = root / "test"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"question {i} about order LH{i:08d}"},
                          {"role": "assistant", "content": "It ships tomorrow. 明天发货。"}]} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), data / "part-0.parquet")
    result = run(QuantizeConfig(model="tiny", data=str(data), decode_tokens=4, output_dir=str(root / "out")))
    return root / "out", result


def test_quantize_job_writes_model_and_comparison(quantized):
    out, result = quantized
    saved = json.loads((out / "comparison.json").read_text())
    assert saved == result and result["scheme"] == "int8-weight-only-per-channel"
    # (tiny is mostly its tied embedding, kept in fp32, so the whole-model size is not the check here)
    assert abs(result["perplexity_increase_pct"]) < 2.0
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "raypost_quant.json").exists()
    assert "sha256" in json.loads((out / "manifest.json").read_text())


def test_int8_model_loads_and_serves_through_the_engine(quantized, tiny):
    from app.chat import render_prompt
    from app.models import load_policy
    from app.serve.engines import GenParams, HFEngine
    from app.compress.quantize import model_bytes
    model, tok = load_policy(str(quantized[0] / "model"))
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    assert model_bytes(model.model.layers) < 0.3 * model_bytes(tiny[0].model.layers)  # int8 + scales vs fp32
    ids = torch.tensor([render_prompt(tok, [{"role": "user", "content": "hi"}])])
    with torch.inference_mode():
        ref, got = tiny[0](ids).logits, model(ids).logits
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())

    engine = HFEngine(str(quantized[0] / "model"))

    async def answer():
        return [e async for e in engine.generate(ids[0].tolist(), GenParams(max_tokens=5, temperature=0))]
    events = asyncio.run(answer())
    assert events[-1]["finish_reason"] in ("length", "stop") and events[-1]["completion_tokens"] >= 1


def test_quantize_model_skips_named_layers(tiny):
    import copy
    model = quantize_model(copy.deepcopy(tiny[0]), skip=("lm_head",))
    assert isinstance(model.lm_head, torch.nn.Linear)
    assert isinstance(model.model.layers[0].mlp.down_proj, Int8Linear)
