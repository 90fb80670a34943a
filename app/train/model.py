"""The model a worker trains: base weights, then the method (full, LoRA, QLoRA, prompt tuning, IA3) via peft;
with packing, attention computed per packed sample (`packed_attention`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import IA3Config, LoraConfig, PromptTuningConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
from transformers import AttentionInterface, AutoModelForCausalLM, BitsAndBytesConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from app.models import DTYPES, load_tokenizer
from app.precision import train_precision


def peft_config(method: str, r: int, alpha: int, dropout: float, target_modules: list[str],
                num_virtual_tokens: int):
    if method in ("lora", "qlora"):
        return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                          bias="none", task_type=TaskType.CAUSAL_LM)
    if method == "prompt_tuning":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
    if method == "ia3":  # learned scales on attention keys/values and the MLP's input, peft's modules per model type
        return IA3Config(task_type=TaskType.CAUSAL_LM)
    return None


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """transformers' SDPA attention, except on packed rows (position ids restarting inside a row, app/train/
    data.py): there causal SDPA runs on each sample's own span, as flash-attention's varlen kernel does on
    GPUs, instead of over the whole row under a block-diagonal mask that throws most of the scores away.
    Same outputs and gradients (tests/test_sft_data.py); rows of 512 tokens holding ~3 samples train 10%
    faster on CPU (SmolLM2-135M, LoRA, 2 threads: 8.35 s against 9.30 s per 4 x 512 forward + backward)."""
    pos = kwargs.get("position_ids")
    starts = None
    if pos is not None and pos.dim() == 2 and pos.shape[0] == query.shape[0] == key.shape[0] \
            and pos.shape[1] == query.shape[2] == key.shape[2]:
        starts = torch.diff(pos, prepend=pos[:, :1] - 1, dim=-1) != 1
    if starts is None or not starts[:, 1:].any():
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    length, rows = query.shape[2], []
    for b in range(query.shape[0]):
        cuts = [0] + [i for i in starts[b].nonzero().flatten().tolist() if i > 0] + [length]
        rows.append(torch.cat([F.scaled_dot_product_attention(
            query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e], is_causal=True, scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1], dropout_p=dropout if module.training else 0.0)
            for s, e in zip(cuts, cuts[1:])], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register("packed_sdpa", packed_attention)
AttentionMaskInterface.register("packed_sdpa", sdpa_mask)  # unpacked batches (validation) keep SDPA's mask


def build_model(cfg, model_path: str):
    """(causal LM ready for DeepSpeed, pad token id) for an SFT or DPO config: cfg.method, cfg.lora,
    cfg.prompt_tuning (SFT only), cfg.train.precision / dropout / gradient_checkpointing."""
    a = cfg.train
    dtype = DTYPES["bfloat16" if train_precision(a.precision) == "bf16" else "float32"]
    kwargs = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": cfg.trust_remote_code}
    if cfg.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if a.dropout is not None:
        kwargs["attention_dropout"] = a.dropout
    if getattr(getattr(cfg, "data", None), "packing", False) and cfg.method != "qlora":
        kwargs["attn_implementation"] = "packed_sdpa"
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=a.gradient_checkpointing)
    elif a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora, prompt = cfg.lora, getattr(cfg, "prompt_tuning", None)
    config = peft_config(cfg.method, lora.r, lora.alpha, lora.dropout, lora.target_modules,
                         prompt.num_virtual_tokens if prompt else 0)
    if config is not None:
        model = get_peft_model(model, config)
    model.config.use_cache = False
    return model.train(), load_tokenizer(model_path).pad_token_id


def trainable_state_dict(module: torch.nn.Module, zero_stage: int) -> dict:
    """Trainable parameters as full CPU tensors (gathered from all ranks under ZeRO-3; every rank must call)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}
    return {n: p.detach().cpu().clone() for n, p in named}
