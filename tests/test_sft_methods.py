"""The other methods and memory layouts, end to end on the tiny model: full fine-tuning with ZeRO-3 and
packing, and prompt tuning."""
import json

import torch
from transformers import AutoModelForCausalLM

from tests.test_sft import sft


def val_losses(out):
    return [json.loads(line)["val_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in line]


def test_full_finetune_zero3_packed(ray_local, sft_data, tmp_path):
    out = tmp_path / "full"
    summary = sft(sft_data, out, "method=full", "scaling.zero_stage=3", "data.packing=true", "optim.lr=3e-3",
                  "train.max_steps=8", "checkpoint.every=8", "eval.every=4")
    assert summary["trainable"]["trainable_share"] == 1.0
    losses = val_losses(out)
    assert losses[-1] < losses[0] - 0.5  # full fine-tuning moves a random model fast
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.num_hidden_layers == 2 and not (out / "adapter").exists()


def test_prompt_tuning(ray_local, sft_data, tmp_path):
    from peft import AutoPeftModelForCausalLM
    out = tmp_path / "pt"
    summary = sft(sft_data, out, "method=prompt_tuning", "prompt_tuning.num_virtual_tokens=8", "optim.lr=3e-2",
                  "train.max_steps=8", "checkpoint.every=8", "eval.every=4")
    assert summary["trainable"]["trainable_params"] == 8 * 64
    losses = val_losses(out)
    assert losses[-1] < losses[0]
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    ids = torch.tensor([[1, 2, 3]])
    assert model(input_ids=ids).logits.shape[1] == 8 + 3  # the soft prompt comes first
