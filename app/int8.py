"""The INT8 weight-only format: Int8Linear, quantizing a model's Linear layers, saving and loading such a
model. A leaf module (torch, safetensors, transformers): app/models.py loads these directories, and the
quantize stage (app/compress/quantize.py) writes them.

    python -m jobs.quantize model=registry:latest-promoted      # writes runs/quantize-int8/model

Why weight-only: torch's dynamic quantization also quantizes activations per tensor, and SmolLM2's
activation outliers take perplexity from 21 to 80 on the demo test split (61 even with per-channel weights
and lm_head kept). Here every Linear keeps int8 weights with one scale per output channel (symmetric,
absmax) and multiplies bf16 activations with torch's int8 weight-pack kernel; embeddings and norms stay
in full precision. A directory holds the HF config + tokenizer, `model.safetensors` with the int8 weights
and scales, and `raypost_quant.json` which `app.models.load_policy` reads to rebuild the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
import transformers  # lazy: the model classes load on first use

from app.precision import compute_dtype

MARKER = "raypost_quant.json"
# From this many rows on, a layer dequantizes its weight and multiplies densely (bf16 on AMX, else float32):
# torch's int8 weight-pack kernel is fastest for a few rows (0.08 ms vs float32's 0.25 for one row of a
# 576x1536 layer) but slow for many (600 rows: 22 ms, against 3.1 dequantized to bf16 on AMX, ~13 in float32).
DENSE_ROWS = 16


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + b with q int8 [out, in] and scale [out]; computed in bf16."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        qweight, scale = quantize_weight(linear.weight.detach().float())
        q.qweight.copy_(qweight)
        q.scale.copy_(scale)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach())
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if rows.shape[0] >= DENSE_ROWS:  # prefill, batched decode: dequantize, then a dense matmul
            dtype = compute_dtype()
            y = rows.to(dtype) @ (self.qweight.to(dtype) * self.scale.to(dtype)[:, None]).T
        else:
            y = torch._weight_int8pack_mm(rows.to(torch.bfloat16).contiguous(), self.qweight, self.scale)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q, scale) with weight ≈ q * scale[:, None]."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def quantize_model(model: nn.Module, skip: tuple[str, ...] = (), empty: bool = False) -> nn.Module:
    """Replace every nn.Linear (except names ending in `skip`) by Int8Linear, in place; `empty` only
    swaps in Int8Linear modules of the right shape, for loading saved weights into."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not full.endswith(skip):
                setattr(module, child_name, Int8Linear(child.in_features, child.out_features, child.bias is not None)
                        if empty else Int8Linear.from_linear(child))
    if hasattr(model, "config") and not isinstance(getattr(model, "lm_head", None), nn.Linear):
        model.config.tie_word_embeddings = False  # lm_head got its own int8 copy
    return model


def assign_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy full-precision weights, by state-dict name, into `model`; an Int8Linear's weight is quantized on
    the way in (what an INT8 rollout copy does at each weight sync, app/rl/actors.py)."""
    for name, value in weights.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if isinstance(module, Int8Linear) and leaf == "weight":
            qweight, scale = quantize_weight(value.detach().float())
            module.qweight.copy_(qweight)
            module.scale.copy_(scale)
        else:
            getattr(module, leaf).data.copy_(value)


def save_int8(model, tokenizer, out: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:  # a full-precision lm_head tied to the embedding: stored once
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    skipped = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    (out / MARKER).write_text(json.dumps({"scheme": "int8-weight-only-per-channel", "skip": skipped, **info},
                                         indent=2))


def load_int8(path: Path, dtype: torch.dtype = torch.float32):
    """Rebuild a model saved by save_int8."""
    marker = json.loads((path / MARKER).read_text())
    config = transformers.AutoConfig.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = quantize_model(model, tuple(marker["skip"]), empty=True)
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_word_embeddings else set()):
        raise ValueError(f"{path}: INT8 weights do not match the model (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    return model.eval()
