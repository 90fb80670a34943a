"""Loss masks, packing without cross-sample attention, batching."""
import numpy as np
import torch

from app.chat import render
from app.train.data import IGNORE, collate, micro_batches, pack, tokenize_batch

CHAT = [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "It ships today."},
        {"role": "user", "content": "谢谢"}, {"role": "assistant", "content": "不客气！"}]


def test_labels_are_the_assistant_tokens(tokenizer):
    from app.models import alias_dir
    out = tokenize_batch({"id": np.array(["a"]), "messages": np.array([CHAT], dtype=object)},
                         str(alias_dir("tiny")), 256)
    ids, mask = render(tokenizer, CHAT)
    assert list(out["input_ids"][0]) == ids
    assert list(out["labels"][0]) == [t if m else IGNORE for t, m in zip(ids, mask)]
    assert tokenizer.decode([t for t in out["labels"][0] if t != IGNORE]) == "It ships today.<|im_end|>不客气！<|im_end|>"
    assert out["drop"] == [""]


def test_rows_that_cannot_train_say_why():
    from app.models import alias_dir
    rows = [CHAT, [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}],
            [{"role": "user", "content": "only a question"}], '{"not json', [{"role": "robot", "content": "x"}]]
    out = tokenize_batch({"id": np.array(list("abcde")), "messages": np.array(rows, dtype=object)},
                         str(alias_dir("tiny")), 64 * 4)
    assert out["drop"] == ["", "too_long", "no_answer", "malformed", "malformed"]
    assert [len(x) for x in out["input_ids"][1:]] == [0, 0, 0, 0]


def test_packed_rows_do_not_attend_across_samples(tiny):
    model, tokenizer = tiny
    samples = [{"id": str(i), "input_ids": ids, "labels": ids}
               for i, ids in enumerate([[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]])]
    rows = pack(samples, max_len=8)  # best fit, longest first: [12..16] + [9, 10, 11], then [5..8] alone
    assert [len(r["input_ids"]) for r in rows] == [8, 4]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]
    batch = collate(rows, tokenizer.pad_token_id)
    batch.pop("_real_tokens")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([[9, 10, 11]])).logits
    assert torch.allclose(packed[0, 5:8], alone[0], atol=1e-5)


def test_padded_batches_and_epoch_order():
    samples = [{"id": f"s{i}", "input_ids": list(range(1, 2 + i)), "labels": list(range(1, 2 + i))} for i in range(10)]
    a = micro_batches(samples, 4, 64, False, seed=0, epoch=0, pad_id=0)
    b = micro_batches(list(reversed(samples)), 4, 64, False, seed=0, epoch=0, pad_id=0)
    assert len(a) == 2 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    c = micro_batches(samples, 4, 64, False, seed=0, epoch=1, pad_id=0)
    assert not torch.equal(a[0]["input_ids"], c[0]["input_ids"])  # reshuffled per epoch
    first = a[0]
    lengths = first["attention_mask"].sum(1)
    assert (first["labels"][first["attention_mask"] == 0] == IGNORE).all() and first["_real_tokens"] == lengths.sum()


def test_a_split_limited_to_zero_rows_is_not_read(sft_data):
    """data.max_val_samples=0 means no validation (it once failed on the empty dataset's missing columns)."""
    from app.train.sft import load_split
    assert load_split(sft_data / "val", "tiny", 64, 0) == (None, {})


def test_pack_keeps_every_sample_whole_and_fills_rows():
    import random
    rng = random.Random(0)
    lengths = [rng.randint(60, 512) for _ in range(300)]
    samples = [{"id": str(i), "input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate(lengths)]
    rows = pack(samples, 512)
    assert all(len(r["input_ids"]) <= 512 for r in rows)
    # every sample once, whole and contiguous, its positions 0..n-1
    found = {}
    for r in rows:
        assert r["labels"] == r["input_ids"]
        starts = [k for k, p in enumerate(r["position_ids"]) if p == 0] + [len(r["input_ids"])]
        for s, e in zip(starts, starts[1:]):
            i = r["input_ids"][s]
            assert i not in found and r["input_ids"][s:e] == [i] * (e - s)
            assert r["position_ids"][s:e] == list(range(e - s))
            found[i] = e - s
    assert found == dict(enumerate(lengths))
    fill = sum(len(r["input_ids"]) for r in rows) / (512 * len(rows))
    assert fill > 0.95, fill  # 0.969; filling rows in arrival order: 0.73


def test_packed_attention_equals_sdpa_under_the_block_mask():
    """app/train/model.py packed_attention (SDPA per packed sample) gives the loss and LoRA gradients of
    transformers' SDPA over the whole row with its block-diagonal mask; unpacked batches take SDPA itself."""
    from app.models import alias_dir
    from app.train.config import SFTConfig
    from app.train.model import build_model
    samples = [{"id": str(i), "input_ids": ids, "labels": ids} for i, ids in enumerate(
        [list(range(5, 5 + n)) for n in (9, 4, 7, 12, 3, 6)])]
    results = {}
    for packing in (False, True):  # packing=True builds the model with attn_implementation="packed_sdpa"
        cfg = SFTConfig(model="tiny", method="lora", data={"packing": packing}, lora={"dropout": 0.0})
        torch.manual_seed(0)  # the same LoRA A both times
        model, pad = build_model(cfg, str(alias_dir("tiny")))
        assert model.config._attn_implementation == ("packed_sdpa" if packing else "sdpa")
        for n, p in model.named_parameters():  # LoRA B starts at 0: give it weights so gradients reach A
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(n)))
        batch = micro_batches(samples, 2, 16, True, 0, 0, pad)[0]
        batch.pop("_real_tokens")
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        padded = micro_batches(samples, 2, 16, False, 0, 0, pad)[0]
        padded.pop("_real_tokens")
        with torch.no_grad():
            results[packing] = (loss.item(), grads, model(**padded).loss.item())
    (loss_a, grads_a, padded_a), (loss_b, grads_b, padded_b) = results[False], results[True]
    assert abs(loss_a - loss_b) < 1e-5 and abs(padded_a - padded_b) < 1e-6
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-6), n


def test_ia3_trains_only_its_scales_and_exports_a_merged_model(tmp_path):
    """method=ia3: peft's IA3 on the architecture's modules (k/v/down for Llama), trainable scales only,
    and export() writes the adapter and a merged final/ with the trained model's outputs."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from app.train.config import SFTConfig
    from app.train.export import export
    from app.train.model import build_model, trainable_state_dict
    from app.train.sft import check_model
    cfg = SFTConfig(model="tiny", method="ia3")
    path = check_model(cfg)
    torch.manual_seed(0)
    model, pad = build_model(cfg, path)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("ia3_l" in n for n in trained)
    assert {n.split(".")[-3] for n in trained} == {"k_proj", "v_proj", "down_proj"}
    samples = [{"id": str(i), "input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for i, n in
               enumerate((9, 4, 7, 12))]
    batch = micro_batches(samples, 4, 16, False, 0, 0, pad)[0]
    batch.pop("_real_tokens")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file(trainable_state_dict(model, 0), ckpt / "trainable.safetensors")
    final = export(ckpt, path, tmp_path / "out", "ia3", cfg.lora.model_dump(), 0)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, model(**batch).logits, atol=1e-4)
