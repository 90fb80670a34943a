import json
import shutil
import time

import pytest
import torch

from app.models import MARKER, ModelError, alias_dir, load_policy, materialize, resolve, verify


def test_tiny_model_shape_and_determinism(tiny):
    model, tokenizer = tiny
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (2, 64, len(tokenizer))
    again, _ = load_policy("tiny")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_alias_conversion_is_recorded_and_reused(tiny):
    path = materialize("smollm2-135m-instruct")
    info = json.loads((path / MARKER).read_text())
    assert info["alias"] == "smollm2-135m-instruct" and len(info["source_sha256"]) == 64
    assert "quantization_config" not in json.loads((path / "config.json").read_text())  # a plain, saveable model
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert materialize("smollm2-135m-instruct") == path
    assert time.perf_counter() - start < 1.0  # reused, not converted again
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert verify(path)


def test_checksum_catches_changed_weights(tmp_path, tiny):
    copy = tmp_path / "tiny"
    shutil.copytree(alias_dir("tiny"), copy)
    assert verify(copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    assert not verify(copy)


def test_local_dir_spec(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, _ = load_policy(str(tmp_path / "m"))
    assert loaded.config.hidden_size == 64


@pytest.mark.parametrize("spec,match", [("no-such-alias", "model path not found.*alias: smollm2"),
                                         ("./missing/model", "model path not found"),
                                         ("some-org/some-model", "cannot get hub model some-org/some-model")])
def test_bad_specs_are_one_clear_error(spec, match, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=match):
        resolve(spec)


def test_dir_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_real_model_knows_paris():
    from app.generation import generate_chat
    model, tokenizer = load_policy("smollm2-135m-instruct")
    [answer] = generate_chat(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                             max_new_tokens=16)
    assert "Paris" in answer


def test_batched_generation_matches_single(tiny):
    from app.generation import generate_chat
    model, tokenizer = tiny
    convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a much longer question here"}]]
    batch = generate_chat(model, tokenizer, convs, max_new_tokens=6)
    single = [generate_chat(model, tokenizer, [c], max_new_tokens=6)[0] for c in convs]
    assert batch == single


def test_bf16_body_keeps_embeddings_head_and_logits_float32(tiny):
    import copy

    from app.precision import bf16_body
    model, _ = tiny
    fast = bf16_body(copy.deepcopy(model))
    layer = fast.model.layers[0].self_attn.q_proj.weight
    assert layer.dtype == torch.bfloat16
    assert fast.get_input_embeddings().weight.dtype == fast.get_output_embeddings().weight.dtype == torch.float32
    assert all(b.dtype == torch.float32 for n, b in fast.named_buffers() if "inv_freq" in n)
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.inference_mode():
        exact, approx = model(ids).logits, fast(ids).logits
    assert approx.dtype == torch.float32
    assert float((approx - exact).abs().max()) < 0.05 * float(exact.abs().max())
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.8


def test_auto_precision_resolves_to_what_this_machine_is_fast_at():
    from app.precision import fast_bf16, train_precision
    assert train_precision("fp32") == "fp32" and train_precision("bf16") == "bf16"
    assert train_precision("auto") == ("bf16" if fast_bf16(cuda=torch.cuda.is_available()) else "fp32")
    model, _ = load_policy("tiny", "auto")
    body = model.model.layers[0].mlp.up_proj.weight.dtype
    assert body == (torch.bfloat16 if fast_bf16() else torch.float32)
