"""The other methods and memory layouts, end to end on the tiny model: full fine-tuning with ZeRO-3 and
packing, and prompt tuning."""
import json

import torch
from transformers import AutoModelForCausalLM

from app.config import load_config
from app.train.config import SFTConfig
from app.train.sft import run
from tests.conftest import sft


def sft_in_process(data, out, *overrides):
    """One worker trained in this process (as a one-worker sweep trial): the method, without Ray Train's start."""
    cfg = load_config(SFTConfig, "jobs/configs/sft_tiny.yaml", [f"data.path={data}", f"output_dir={out}",
                                                                "scaling.num_workers=1", *overrides])
    return run(cfg, report=lambda metrics: None)


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
    summary = sft_in_process(sft_data, out, "method=prompt_tuning", "prompt_tuning.num_virtual_tokens=8", "optim.lr=3e-2",
                  "train.max_steps=8", "checkpoint.every=8", "eval.every=4", "system_prompt=You are Lumi 小鹿.")
    assert summary["trainable"]["trainable_params"] == 8 * 64
    losses = val_losses(out)
    assert losses[-1] < losses[0]
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    ids = torch.tensor([[1, 2, 3]])
    assert model(input_ids=ids).logits.shape[1] == 8 + 3  # the soft prompt comes first
    from transformers import AutoTokenizer

    from app.chat import render_prompt
    for folder in ("adapter", "final"):  # the system prompt it trained with travels with the model
        tok = AutoTokenizer.from_pretrained(out / folder)
        assert tok.decode(render_prompt(tok, [{"role": "user", "content": "hi"}])).startswith(
            "<|im_start|>system\nYou are Lumi 小鹿.<|im_end|>")


def test_continued_pretraining_on_raw_documents(ray_local, tokenizer, tmp_path):
    """objective=causal_lm: documents (the data stage's text records) -> EOS-terminated pieces of max_len
    with every token a label, packed across documents; the seeded tiny run pinned."""
    import random

    import numpy as np

    from app.data.io import write_parquet
    from app.demo.generate import documents
    from app.records import SFT_SCHEMA
    from app.models import resolve
    from app.train.data import IGNORE, tokenize_batch
    tok = tokenizer
    docs = [json.loads(d) for d in documents(random.Random(0), 120)]
    recs = [{"id": d["id"], "messages": [{"role": "assistant", "content": d["text"]}], "intent": d["kind"],
             "lang": d["lang"], "flags": ""} for d in docs]
    out = tokenize_batch({"id": [r["id"] for r in recs[:8]], "messages": [r["messages"] for r in recs[:8]]},
                         str(resolve("tiny")), 50, "causal_lm")
    first = tok(recs[0]["messages"][0]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pieces = [i for i, rid in zip(out["input_ids"], out["id"]) if rid.split("#")[0] == recs[0]["id"]]
    assert len(pieces) > 1 and all(len(p) <= 50 for p in pieces)  # long documents are cut, not dropped
    assert np.concatenate(pieces).tolist() == first  # the whole text, then EOS
    assert all((lab == ids).all() and IGNORE not in lab for ids, lab in zip(out["input_ids"], out["labels"]))

    write_parquet(recs[:100], SFT_SCHEMA, tmp_path / "docs" / "train")
    write_parquet(recs[100:], SFT_SCHEMA, tmp_path / "docs" / "val")
    summary = sft_in_process(tmp_path / "docs", tmp_path / "cpt", "objective=causal_lm", "data.packing=true",
                             "data.max_len=128", "data.max_train_samples=null", "train.max_steps=4",
                             "checkpoint.every=4", "eval.every=4")
    assert summary["data"]["train"]["kept"] > 100  # pieces of the 100 documents
    torch.testing.assert_close(val_losses(tmp_path / "cpt"), [10.799106, 10.738945], rtol=1e-4, atol=1e-4)


def test_distill_kl_is_zero_on_the_teacher_itself():
    from app.train.data import IGNORE
    from app.train.sft import distill_kl
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5, IGNORE], [IGNORE, 1, 2, 3, 4, 5]])
    assert distill_kl(teacher, teacher, labels, 2.0).item() < 1e-6
    kl = distill_kl(student, teacher, labels, 2.0)
    mask = labels[:, 1:] != IGNORE
    p = torch.softmax(teacher[:, :-1][mask] / 2, -1)
    expected = (p * (p.log() - torch.log_softmax(student[:, :-1][mask] / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(kl, expected)


def test_compress_prunes_then_distills_from_the_teacher(ray_local, sft_data, tmp_path):
    """jobs.compress on the tiny model: one of its two layers and half of each MLP go, then a short
    distillation from the unpruned model (in this process); sizes, the dropped layer and the KL pinned."""
    from transformers import AutoModelForCausalLM

    from app.compress.compress import run as compress
    from app.compress.config import CompressConfig
    cfg = load_config(CompressConfig, "jobs/configs/compress_demo.yaml", [
        "teacher=tiny", f"data={sft_data}", f"output_dir={tmp_path}/c", "drop_layers=1", "mlp_keep=0.5",
        "calibration_samples=16", "distill=jobs/configs/sft_tiny.yaml",
        "overrides=[method=full, optim.lr=3e-4, train.max_steps=4, eval.every=4, checkpoint.every=4, "
        "scaling.num_workers=1, tensorboard=false, distill.alpha=1.0, data.max_val_samples=16]"])  # the KL term alone
    result = compress(cfg, report=lambda metrics: None)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "c" / "pruned")
    assert pruned.config.num_hidden_layers == 1 and pruned.config.intermediate_size == 128
    assert result["prune"]["dropped_layers"] == [0]
    sizes = result["sizes"]
    assert sizes["teacher"]["parameters"] == 3268928 and sizes["pruned"]["parameters"] == \
        sizes["distilled"]["parameters"] == 3182784
    kl = [json.loads(line).get("val_kl") for line in (tmp_path / "c" / "distill" / "metrics.jsonl").read_text()
          .splitlines() if "val_kl" in line]
    torch.testing.assert_close(kl, [0.0018806, 0.0010523], rtol=1e-3, atol=1e-6)
    assert kl[-1] < kl[0]  # the student moves towards the teacher
