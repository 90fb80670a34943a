"""ONNX export with the KV cache, and the model that runs it on ONNX Runtime (the serving engines and
app.models load an export through `OnnxCausalLM`; jobs.export is app/compress/export.py).

The exporter is transformers' own (`transformers.exporters.OnnxExporter`, torch.export + torch.onnx +
ONNX Runtime fixes): optimum's ONNX exporter (optimum-onnx) pins transformers<4.58 and this project runs
transformers 5. Of the prefill and decode graphs it can trace we keep one: the multi-token decode graph
(cache in and out, any number of new tokens), which prefills too when given an empty cache, so the weights
are stored once, not twice. It is traced on a left-padded batch of two, so batch, length and the attention
mask stay dynamic. `OnnxCausalLM` gives it a causal LM's forward (input_ids, attention_mask, position_ids,
cache), so the serving batcher (app/serve/batching.py) and the greedy check below drive it exactly as they
drive a transformers model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import DynamicCache

MARKER = "export.json"   # what transformers' ExportedModel.save_pretrained writes beside the graphs


def is_onnx_export(path: str | Path) -> bool:
    manifest = Path(path) / MARKER
    return manifest.is_file() and json.loads(manifest.read_text()).get("export_format") == "onnx"


def export_onnx(model, tokenizer, out: Path, samples: list[list[int]], fusions: str | None = None) -> Path:
    """Write the prefill and decode graphs, the model config and the tokenizer to `out`. `samples`: two
    prompts of different lengths (token ids) to trace with, left-padded into one batch."""
    from transformers.exporters import OnnxConfig, OnnxExporter
    from transformers.exporters.utils import decompose_for_generation
    width = max(len(s) for s in samples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inputs = {"input_ids": torch.tensor([[pad] * (width - len(s)) + s for s in samples]),
              "attention_mask": torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in samples])}
    decode, decode_inputs = decompose_for_generation(model.float().eval(), inputs, multi_token_decode=True)["decode"]
    exported = OnnxExporter().export(decode, decode_inputs, OnnxConfig(dynamic=True, ort_fusions=fusions))
    if out.exists():
        shutil.rmtree(out)
    exported.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class OnnxCausalLM(torch.nn.Module):
    """A causal LM whose forward runs an ONNX export on ONNX Runtime (CPU). The cache passed in is filled in
    place, as a transformers model fills it; an empty one goes in as zero-length tensors (a prefill)."""

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__()
        import onnxruntime as ort
        from transformers import GenerationConfig
        from transformers.exporters import ExportedModel
        options = ort.SessionOptions()
        if threads > 0:  # ONNX Runtime sizes its pool from the machine's cores, not the replica's reservation
            options.intra_op_num_threads = threads
        self.exported = ExportedModel.from_pretrained(str(path), device="cpu", session_options=options)
        self.config = self.exported.config
        self.generation_config = self.exported.generation_config or GenerationConfig.from_model_config(self.config)
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.kv_shape = (c.num_key_value_heads, 0, head_dim)  # one layer of an empty cache, less the batch

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        if cache is None or cache.get_seq_length() == 0:
            empty = torch.zeros(len(input_ids), *self.kv_shape)
            past = DynamicCache(config=self.config)
            for layer in range(self.config.num_hidden_layers):
                past.update(empty, empty, layer)
        else:
            past = cache
        out = self.exported.runners["model"](input_ids=input_ids, attention_mask=attention_mask,
                                             position_ids=position_ids, cache=past)
        if cache is not None:
            cache.layers = out.cache.layers
        return out


@torch.inference_mode()
def greedy(model, prompt: list[int], max_new_tokens: int, stop: set[int] = frozenset()) -> list[int]:
    """Greedy tokens after `prompt` (batch 1, KV cache), the same loop for a transformers model and an
    OnnxCausalLM, so that both their tokens and their speed compare like for like."""
    ids = torch.tensor([prompt])
    mask, position, cache, tokens = torch.ones_like(ids), torch.arange(len(prompt))[None], DynamicCache(), []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache).logits
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        tokens.append(token)
        ids, position = torch.tensor([[token]]), position[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
    return tokens
