"""SFT throughput, each figure against a baseline measured in the same run. Prints one JSON line.

    .venv/bin/python benchmarks/train_throughput.py            # SmolLM2-135M-Instruct, demo data
    .venv/bin/python benchmarks/train_throughput.py --model tiny --steps 6

1. Our Ray Train path (jobs.sft, 1 worker with all CPUs, LoRA dropout 0) against a bare PyTorch loop (same
   model, LoRA r16/alpha32 on q,k,v,o, batches, AdamW, thread count) and against TRL's SFTTrainer (the same
   rows as chat messages, same LoRA, max_length, micro-batch and threads, no packing): tokens/s in steady
   state (after the first step), the overhead against the bare loop and the ratio to TRL. Then the shipped
   settings (sft_demo.yaml: LoRA dropout 0.1, ZeRO stage auto) and the same with ZeRO-2 (the old default)
   against TRL with dropout 0.1.
2. Packed against padded batches: effective (non-pad) tokens/s, on the demo's chats (67-285 tokens) and on a
   corpus with a wide length spread (the demo chats alternating with GSM8K solutions from ../shared/data,
   108-570 tokens) at --pack-max-len.
3. LoRA against full fine-tuning: trainable share and peak memory (each in its own process).
Needs the data stage's demo output (`make demo`, or python -m jobs.data jobs/configs/data_demo.yaml).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = next((p for p in (ROOT / "runs/data-demo/train", ROOT / "runs/pipeline-demo/data/train") if p.exists()),
            ROOT / "runs/data-demo/train")
LORA = ["q_proj", "k_proj", "v_proj", "o_proj"]


def trl_sft(model_name: str, steps: int, mb: int, max_len: int, threads: int, dropout: float = 0.0) -> dict:
    """TRL's SFTTrainer on the same rows (their chat messages), LoRA r16/alpha32 on q,k,v,o, AdamW, no
    packing, CPU: non-pad tokens/s between the end of step 1 and the end of the last step."""
    import tempfile
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from app.models import load_policy
    torch.set_num_threads(threads)
    model, tokenizer = load_policy(model_name)
    table = pq.read_table(DATA).slice(0, mb * (steps + 1) * 3).to_pydict()
    data = Dataset.from_list([{"messages": [{"role": m["role"], "content": m["content"]} for m in conv]}
                              for conv in table["messages"]])
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, use_cpu=True, per_device_train_batch_size=mb, max_length=max_len,
                         max_steps=steps + 1, learning_rate=1e-4, logging_steps=1, save_strategy="no",
                         report_to="none", seed=0, disable_tqdm=True, packing=False, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=LORA,
                                                    task_type="CAUSAL_LM"))
        trainer.add_callback(type("Clock", (TrainerCallback,), {"on_step_end": lambda self, *a, **k:
                                  stamps.append(time.perf_counter())})())
        trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    return {"tokens_per_s": round((tokens[-1] - tokens[0]) / (stamps[-1] - stamps[0]), 1)}


GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def samples(model: str, n: int, max_len: int, corpus: str = "demo") -> list[dict]:
    """n tokenized rows: the demo chats, or ("wide") demo chats alternating with GSM8K question/solution chats."""
    import pyarrow.parquet as pq
    from app.models import resolve
    from app.train.data import tokenize_batch
    table = pq.read_table(DATA).slice(0, n).to_pydict()
    if corpus == "wide":
        with open(GSM8K) as f:
            math = [json.loads(next(f)) for _ in range(n // 2)]
        chats = [json.dumps([{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}])
                 for r in math]
        mixed = [m for pair in zip(table["messages"], chats) for m in pair]
        table = {"id": [f"w{i:05d}" for i in range(len(mixed))], "messages": mixed}
    out = tokenize_batch({"id": table["id"], "messages": table["messages"]}, str(resolve(model)), max_len)
    return [{"id": i, "input_ids": list(x), "labels": list(y)}
            for i, x, y, drop in zip(out["id"], out["input_ids"], out["labels"], out["drop"]) if not drop]


def bare_loop(model_name: str, method: str, steps: int, mb: int, max_len: int, packing: bool, threads: int,
              corpus: str = "demo") -> dict:
    """A plain PyTorch loop on our batches: the baseline. Returns tokens/s (non-pad) after one warm-up step."""
    import torch
    from app.models import resolve
    from app.train.config import SFTConfig
    from app.train.data import micro_batches
    from app.train.model import build_model
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = SFTConfig(model=model_name, method=method, lora={"dropout": 0.0, "target_modules": LORA}, data={"packing": packing})
    model, pad = build_model(cfg, str(resolve(model_name)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batches = micro_batches(samples(model_name, mb * (steps + 1) * 3, max_len, corpus), mb, max_len, packing, 0, 0, pad)
    tokens, start = 0, None
    for i, batch in enumerate(batches[:steps + 1]):
        if i == 1:
            start, tokens = time.perf_counter(), 0
        batch = dict(batch)
        tokens += batch.pop("_real_tokens")
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": round(tokens / (time.perf_counter() - start), 1), "trainable_share": round(trainable / total, 4),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}


def in_subprocess(fn: str = "bare_loop", **kwargs) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); " \
           f"from train_throughput import {fn}; print(json.dumps({fn}(**{kwargs!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ray_path(model: str, steps: int, mb: int, max_len: int, cpus: int, *settings: str) -> dict:
    """jobs.sft with jobs/configs/sft_demo.yaml on one worker with every CPU, LoRA on TRL's q,k,v,o: the shipped
    settings (ZeRO stage auto, LoRA dropout 0.1), or those with `settings` (key=value) on top."""
    out = ROOT / "runs" / "bench-sft"
    cmd = [sys.executable, "-m", "jobs.sft", "jobs/configs/sft_demo.yaml", f"model={model}", f"output_dir={out}",
           "name=bench", f"train.max_steps={steps + 1}", f"train.micro_batch_size={mb}", f"data.max_len={max_len}",
           "train.log_every=1", f"lora.target_modules=[{','.join(LORA)}]", "scaling.num_workers=1",
           f"scaling.cpus_per_worker={cpus}", f"checkpoint.every={10 ** 6}", f"eval.every={10 ** 6}",
           "data.max_val_samples=0", "wandb=false", "tensorboard=false", f"data.max_train_samples={mb * (steps + 1) * 3}",
           *settings]
    subprocess.run(["rm", "-rf", str(out)])
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "tokens" in m]
    first, last = steps[0], steps[-1]  # after the first (warm-up) step, as in the bare loop
    return {"tokens_per_s": round((last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=192)
    parser.add_argument("--pack-max-len", type=int, default=512, help="row length of the wide-spread packing test")
    args = parser.parse_args()
    cpus = os.cpu_count()
    common = dict(model_name=args.model, steps=args.steps, mb=args.micro_batch, max_len=args.max_len, threads=cpus)
    bare = in_subprocess(method="lora", packing=False, **common)
    run = (args.model, args.steps, args.micro_batch, args.max_len, cpus)
    ours = ray_path(*run, "lora.dropout=0.0")
    shipped, zero2 = ray_path(*run), ray_path(*run, "scaling.zero_stage=2")
    trl = in_subprocess("trl_sft", **common)
    trl_dropout = in_subprocess("trl_sft", dropout=0.1, **common)
    packed = in_subprocess(method="lora", packing=True, **common)
    full = in_subprocess(method="full", packing=False, **common)
    wide = {**common, "max_len": args.pack_max_len, "corpus": "wide"}
    wide_padded = in_subprocess(method="lora", packing=False, **wide)
    wide_packed = in_subprocess(method="lora", packing=True, **wide)
    print(json.dumps({
        "model": args.model, "steps": args.steps, "micro_batch": args.micro_batch, "max_len": args.max_len, "cpus": cpus,
        "ray_train_vs_bare": {"ours_tokens_per_s": ours["tokens_per_s"], "bare_tokens_per_s": bare["tokens_per_s"],
                              "overhead": round(1 - ours["tokens_per_s"] / bare["tokens_per_s"], 3)},
        "ray_train_vs_trl": {"ours_tokens_per_s": ours["tokens_per_s"], "trl_tokens_per_s": trl["tokens_per_s"],
                             "ratio": round(ours["tokens_per_s"] / trl["tokens_per_s"], 2)},
        # the shipped settings (LoRA dropout 0.1, ZeRO auto = 0 here) and the old default ZeRO-2, against TRL
        # with the same dropout
        "shipped_vs_trl": {"ours_tokens_per_s": shipped["tokens_per_s"], "zero2_tokens_per_s": zero2["tokens_per_s"],
                           "trl_tokens_per_s": trl_dropout["tokens_per_s"],
                           "ratio": round(shipped["tokens_per_s"] / trl_dropout["tokens_per_s"], 2),
                           "zero2_ratio": round(zero2["tokens_per_s"] / trl_dropout["tokens_per_s"], 2)},
        "packed_vs_padded": {"packed_tokens_per_s": packed["tokens_per_s"], "padded_tokens_per_s": bare["tokens_per_s"],
                             "speedup": round(packed["tokens_per_s"] / bare["tokens_per_s"], 2)},
        "packed_vs_padded_wide": {"max_len": args.pack_max_len, "packed_tokens_per_s": wide_packed["tokens_per_s"],
                                  "padded_tokens_per_s": wide_padded["tokens_per_s"],
                                  "speedup": round(wide_packed["tokens_per_s"] / wide_padded["tokens_per_s"], 2)},
        "lora_vs_full": {"lora_trainable_share": bare["trainable_share"], "full_trainable_share": full["trainable_share"],
                         "lora_peak_rss_gb": bare["peak_rss_gb"], "full_peak_rss_gb": full["peak_rss_gb"],
                         "lora_tokens_per_s": bare["tokens_per_s"], "full_tokens_per_s": full["tokens_per_s"]}}))


if __name__ == "__main__":
    main()
