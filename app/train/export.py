"""Turn a training checkpoint into outputs users load with plain libraries:
final/ (AutoModelForCausalLM.from_pretrained, LoRA merged, tokenizer with its chat template) and, for
adapter methods, adapter/ (peft.PeftModel.from_pretrained)."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from app.chat import with_system_prompt
from app.models import load_tokenizer
from app.train.model import peft_config


def export(checkpoint: Path, base_path: str, out: Path, method: str, lora: dict, num_virtual_tokens: int,
           system_prompt: str | None = None) -> Path:
    """final/ (and adapter/) of a checkpoint; the tokenizer's chat template carries `system_prompt` (the one
    the model trained with) to every stage that loads the model."""
    weights = load_file(checkpoint / "trainable.safetensors")
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True)
    tokenizer = load_tokenizer(base_path)
    if system_prompt is not None:
        tokenizer.chat_template = with_system_prompt(tokenizer.chat_template, system_prompt)
    final = out / "final"
    for folder in (final, out / "adapter"):
        shutil.rmtree(folder, ignore_errors=True)
    config = peft_config("lora" if method == "qlora" else method, lora["r"], lora["alpha"], lora["dropout"],
                         lora["target_modules"], num_virtual_tokens)
    if config is None:
        missing = set(weights) - set(dict(model.named_parameters()))
        if missing:
            raise RuntimeError(f"checkpoint weights not in the model: {sorted(missing)[:3]}")
        model.load_state_dict(weights, strict=False)
    else:
        from peft import get_peft_model
        model = get_peft_model(model, config)
        own = {k: v for k, v in model.state_dict().items() if k in weights}
        if len(own) != len(weights):
            raise RuntimeError("checkpoint weights do not match the adapter layout")
        model.load_state_dict(weights, strict=False)
        model.save_pretrained(out / "adapter", safe_serialization=True)
        tokenizer.save_pretrained(out / "adapter")
        if method == "prompt_tuning":  # soft prompts cannot be merged into the weights
            shutil.copytree(out / "adapter", final)
            return final
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    return final
