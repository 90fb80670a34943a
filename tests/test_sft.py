"""SFT end to end through a real local Ray: 2 workers, DeepSpeed ZeRO-2, the tiny model."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from app.config import UserError, load_config
from app.data.io import write_parquet
from app.records import SFT_SCHEMA
from app.train import checkpoints
from app.train.config import SFTConfig
from tests.conftest import sft


def last_weights(out: Path) -> dict:
    done = checkpoints.complete_checkpoints(out / "ray" / "train")
    return load_file(done[-1] / "trainable.safetensors")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run_a(ray_local, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "a"
    return sft(sft_data, out, "eval.generate=3", "eval.max_new_tokens=8", "tensorboard=true"), out


def test_loss_goes_down_and_outputs_written(run_a):
    summary, out = run_a
    # the seeded tiny run, pinned: 2 workers, ZeRO-0 (auto for LoRA), LoRA, lr 1e-2, 12 steps (any change to data order,
    # loss masking, the loop or the optimizer moves these)
    train = [(m["step"], m["train_loss"]) for m in metrics(out) if "train_loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics(out) if "val_loss" in m]
    torch.testing.assert_close(train, [(2, 10.801545), (4, 10.764058), (6, 10.695556), (8, 10.636014),
                                       (10, 10.585743), (12, 10.572187)], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(val, [(0, 10.801856), (4, 10.715551), (8, 10.578433), (12, 10.508191)],
                               rtol=1e-4, atol=1e-4)
    norms = [m["grad_norm"] for m in metrics(out) if "train_loss" in m]
    assert len(norms) == len(train) and all(0 < n < 1e3 for n in norms)  # logged each step, before clipping
    # eval.generate: greedy answers to 3 val rows per worker at step 0 and every checkpoint (greedy decoding
    # draws no random numbers: the pinned losses above are those of the run without it)
    answered = [(m["step"], m["val_rougeL"], m["val_bleu"]) for m in metrics(out) if "val_rougeL" in m]
    assert [s for s, _, _ in answered] == [0, 4, 8, 12]
    assert all(0 <= r <= 1 and 0 <= b <= 100 for _, r, b in answered)
    assert summary["data"]["train"] == {"read": 256, "kept": 256, "dropped": {}}
    assert summary["val_loss_before"] == val[0][1] and summary["val_loss_after"] == val[-1][1]
    assert summary["trainable"]["trainable_share"] < 0.05
    for name in ("final/model.safetensors", "adapter/adapter_model.safetensors", "training_curve.png",
                 "manifest.json", "config.resolved.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.*"))
    assert not list((out / "final").glob("*.bin"))


def test_final_loads_with_transformers_and_adapter_with_peft(run_a):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from app.models import alias_dir
    _, out = run_a
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    plain_model = AutoModelForCausalLM.from_pretrained(alias_dir("tiny"))
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(alias_dir("tiny")), out / "adapter")
    ids = torch.tensor([tokenizer("Where is my order?")["input_ids"]])
    with torch.no_grad():
        merged, lora, plain = final(ids).logits, adapted(ids).logits, plain_model(ids).logits
    assert torch.allclose(merged, lora, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)  # training changed the model


def kill_a_worker_when(ready, killed: list) -> threading.Thread:
    """SIGKILL one Ray Train worker as soon as ready() holds (polled for up to 5 minutes)."""
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if ready():
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                        os.kill(proc.info["pid"], signal.SIGKILL)
                        killed.append(proc.info["pid"])
                        break
            time.sleep(0.2)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_resume_and_a_killed_worker_end_on_the_uninterrupted_weights(run_a, sft_data, tmp_path):
    """Stopped at step 8, the same command resumes there; a worker SIGKILLed after the resumed run's step 10
    is restarted by Ray Train from the step-8 checkpoint; the end state is the uninterrupted run's, exactly."""
    summary_a, out_a = run_a
    out = tmp_path / "b"
    sft(sft_data, out, "train.max_steps=8")
    assert checkpoints.state_of(checkpoints.complete_checkpoints(out / "ray" / "train")[-1])["step"] == 8
    killed, first_run = [], len(metrics(out))

    def resumed_past_10() -> bool:
        lines = (out / "metrics.jsonl").read_text().splitlines()[first_run:]
        return any('"train_loss"' in line and '"step": 10,' in line for line in lines)

    killer = kill_a_worker_when(resumed_past_10, killed)
    summary = sft(sft_data, out)  # the same command again, now to 12 steps: resumes at 8
    killer.join(timeout=1)
    assert killed, "no worker was killed"
    steps = [m["step"] for m in metrics(out) if "train_loss" in m]
    assert steps[:4] == [2, 4, 6, 8] and all(s > 8 for s in steps[4:]) and steps[-1] == 12  # never before 8 again
    assert summary["steps"] == 12
    a, b = last_weights(out_a), last_weights(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert abs(summary["val_loss_after"] - summary_a["val_loss_after"]) < 1e-4


def test_bad_input_fails_at_start(run_a, sft_data, tmp_path):
    with pytest.raises(UserError, match="qlora needs CUDA"):
        sft(sft_data, tmp_path / "q", "method=qlora")
    with pytest.raises(UserError, match=r"lora.target_modules \['qkv'\] are not linear layers.*q_proj"):
        sft(sft_data, tmp_path / "t", "lora.target_modules=[qkv]")
    with pytest.raises(UserError, match="no training data"):
        sft(tmp_path / "nowhere", tmp_path / "n")
    empty = tmp_path / "empty"
    write_parquet([{"id": "x", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a" * 5000}],
                    "intent": "", "lang": "", "flags": ""}], SFT_SCHEMA, empty / "train")
    with pytest.raises(UserError, match=r"no usable training rows in .*: of 1 read, 1 longer than data.max_len=64"):
        sft(empty, tmp_path / "e", "data.max_len=64")
    _, out_a = run_a
    with pytest.raises(UserError, match="checkpoints of another model"):
        sft(sft_data, out_a, "method=full")


def test_corrupt_checkpoint_falls_back_to_previous(run_a, tmp_path, caplog):
    import shutil
    _, out_a = run_a
    copy = tmp_path / "train"
    shutil.copytree(out_a / "ray" / "train", copy)
    done = checkpoints.complete_checkpoints(copy)
    assert len(done) >= 2
    (done[-1] / "trainable.safetensors").write_bytes(b"garbage")
    assert checkpoints.pick_resume(done[-1]) == done[0]
    assert "not usable" in caplog.text
    (done[0] / "complete-rank1").unlink()  # an incomplete one is skipped too
    assert checkpoints.pick_resume(done[-1]) is None


def test_two_stage_init_from_and_replay_mix(run_a, sft_data, tmp_path):
    from app.train.sft import build_datasets, check_model
    _, out_a = run_a
    cfg = load_config(SFTConfig, "jobs/configs/sft_tiny.yaml",
                      [f"data.path={sft_data}", f"init_from={out_a}", f"data.replay_path={sft_data}/val",
                       "data.replay_share=0.2", "data.max_train_samples=80"])
    path = check_model(cfg)
    assert path == str(out_a / "final")
    datasets, counts = build_datasets(cfg, path)
    assert counts["train"] == {"read": 80, "kept": 80, "dropped": {}} and counts["replay"]["kept"] == 44
    train_rows = sum(datasets[f"train_{i}"].count() for i in range(2))
    assert train_rows == 100  # 80 domain rows + 20 replay rows (20% of the mix)
    ids = {r["id"] for i in range(2) for r in datasets[f"train_{i}"].take_all()}
    assert len(ids & {f"r{i:04d}" for i in range(256, 300)}) == 20
