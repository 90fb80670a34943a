"""The model a worker trains: base weights, then the method (full, LoRA, QLoRA, prompt tuning) via peft."""
from __future__ import annotations

from types import SimpleNamespace

import torch


def peft_config(method: str, r: int, alpha: int, dropout: float, target_modules: list[str],
                num_virtual_tokens: int):
    from peft import LoraConfig, PromptTuningConfig, TaskType
    if method in ("lora", "qlora"):
        return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                          bias="none", task_type=TaskType.CAUSAL_LM)
    if method == "prompt_tuning":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
    return None


def build_model(a: SimpleNamespace):
    """(model ready for DeepSpeed, pad token id)."""
    from transformers import AutoModelForCausalLM
    from peft import get_peft_model
    from app.models import DTYPES, load_tokenizer
    kwargs = {"dtype": DTYPES["bfloat16" if a.precision == "bf16" else "float32"], "use_safetensors": True,
              "trust_remote_code": a.trust_remote_code}
    if a.method == "qlora":
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if a.dropout is not None:
        kwargs["attention_dropout"] = a.dropout
    model = AutoModelForCausalLM.from_pretrained(a.model_path, **kwargs)
    if a.method == "qlora":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=a.gradient_checkpointing)
    elif a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = peft_config(a.method, a.lora_r, a.lora_alpha, a.lora_dropout, a.target_modules, a.num_virtual_tokens)
    if config is not None:
        model = get_peft_model(model, config)
    model.config.use_cache = False
    return model.train(), load_tokenizer(a.model_path).pad_token_id


def trainable_state_dict(module: torch.nn.Module, zero_stage: int) -> dict:
    """Trainable parameters as full CPU tensors (gathered from all ranks under ZeRO-3; every rank must call)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}
    return {n: p.detach().cpu().clone() for n, p in named}
