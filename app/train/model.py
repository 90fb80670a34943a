"""The model a worker trains: base weights, then the method (full, LoRA, QLoRA, prompt tuning) via peft."""
from __future__ import annotations

import torch
from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from app.models import DTYPES, load_tokenizer
from app.precision import train_precision


def peft_config(method: str, r: int, alpha: int, dropout: float, target_modules: list[str],
                num_virtual_tokens: int):
    if method in ("lora", "qlora"):
        return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                          bias="none", task_type=TaskType.CAUSAL_LM)
    if method == "prompt_tuning":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
    return None


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
