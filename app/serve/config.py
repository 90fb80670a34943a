"""ServeArgs: the typed arguments of the Serve application (the `args:` block of serve_configs/*.yaml).

Unknown keys fail when the application is built, naming the key. The listen address is Serve's own
`http_options` (127.0.0.1:8000 in every config here); API keys are required when it is not loopback.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from app.config import Config, SafetySection, UserError
from app.registry import Registry, default_path


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def require_keys(host: str, keys: list[str]) -> None:
    """Serving beyond loopback without API keys is refused at start; so is serving on a host that could not
    be read (fail closed)."""
    if host not in LOOPBACK and not keys:
        where = f"http_options.host is {host}" if not host.startswith("unknown") else \
            f"the Serve HTTP host could not be read ({host})"
        raise UserError(f"{where}: set api_keys (or the RAYPOST_API_KEYS env var) before exposing the endpoint "
                        f"beyond 127.0.0.1")


def http_host() -> str:
    """The host the running Serve instance listens on, from Ray's private client. When that lookup fails
    (outside Serve, or a Ray upgrade that moved it): "unknown (<why>)", which require_keys treats as exposed."""
    try:
        from ray.serve.context import _get_global_client
        return _get_global_client().http_config.host
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


class Limits(Config):
    max_ongoing_requests: int = Field(16, ge=1)   # per engine replica: the rows it batches plus its own queue
    max_queued_requests: int = Field(32, ge=0)    # waiting at each caller beyond that -> 503 + Retry-After
    request_timeout_s: float = Field(120.0, gt=0)  # whole request; streams end with an error chunk
    max_body_bytes: int = Field(1_000_000, ge=1024)
    default_max_tokens: int = Field(256, ge=1)     # when a request gives none (capped by the context)
    max_prompt_tokens: int = Field(4096, ge=1)     # longer prompts: 400 context_length_exceeded (also < context)
    rate_limit_per_minute: float = Field(0, ge=0)  # per API key (or client address); 0 = off
    rate_limit_burst: int | None = Field(None, ge=1)
    retry_after_s: int = Field(1, ge=1)


class RagArgs(Config):
    """Retrieval-augmented answers: a request with "rag": true gets the top `k` chunks of the index
    (jobs.index output) as numbered sources in its system turn, and the response lists them."""
    index: str                              # a jobs.index output folder
    k: int = Field(4, ge=1, le=16)
    mode: Literal["bm25", "dense", "hybrid"] = "bm25"  # bm25: best measured on the demo's item-code questions


class RequestLogging(Config):
    """The opt-in request log (app/serve/requestlog.py): PII-redacted request/answer pairs and feedback."""
    requests: bool = False
    path: str = "runs/request-log"
    sample_rate: float = Field(1.0, ge=0, le=1)


class ServeArgs(Config):
    model: str = "smollm2-135m-instruct"    # spec (dir, alias, hub id) or registry:latest-promoted / registry:<id>
    registry: str = Field(default_factory=default_path)  # RAYPOST_REGISTRY or runs/registry.sqlite
    served_model_name: str = "raypost"     # the `model` name that selects the base model
    adapters: dict[str, str] = {}           # LoRA adapters of the base: name -> directory, chosen by `model`
    max_loaded_adapters: int = Field(4, ge=1)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    dtype: str = "float32"
    trust_remote_code: bool = False
    max_batch_size: int = Field(8, ge=1)
    prefill_tokens: int = Field(256, ge=16)  # prompt tokens per engine step: longer prompts prefill in chunks
    num_replicas: int = Field(1, ge=1)
    cpus_per_replica: float = Field(1.0, ge=0)
    gpus_per_replica: float | None = None   # None: 1 when CUDA is visible to the cluster, else 0
    vllm_args: dict = {}                    # extra AsyncEngineArgs (gpu_memory_utilization, max_model_len, ...)
    api_keys: list[str] = []                # also read from the env var named by api_keys_env (comma-separated)
    api_keys_env: str = "RAYPOST_API_KEYS"
    safety: Literal["redact", "refuse", "off"] = "redact"
    sensitive_words: str | None = None      # word-list file; None = the data stage's list
    toxicity: SafetySection = SafetySection()  # best_of's and the request log's verdicts (app/safety.py)
    reward_model: str | None = None         # a jobs.reward output: enables best_of (its own deployment)
    rag: RagArgs | None = None              # a retriever deployment: requests opt in with "rag": true
    logging: RequestLogging = RequestLogging()  # off by default; POST /v1/feedback needs it on
    limits: Limits = Limits()

    def keys(self) -> list[str]:
        return self.api_keys + [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]

    def context_length(self, model_path: str) -> int:
        from transformers import AutoConfig

        from app.models import resolve
        from app.serve.engines import pick
        config = AutoConfig.from_pretrained(resolve(model_path), trust_remote_code=self.trust_remote_code)
        context = getattr(config, "max_position_embeddings", 2048)
        if pick(self.engine, model_path) == "vllm":  # engine_kwargs' max_model_len unless vllm_args sets one
            return min(context, self.vllm_args.get("max_model_len") or 2048)
        return context

    def lookup(self) -> tuple[str, dict | None]:
        """(model spec, registry version or None): registry references resolved to the registered model path."""
        if not self.model.startswith("registry:"):
            return self.model, None
        ref = self.model.split(":", 1)[1]
        version = Registry(self.registry).get(ref)
        if version is None:
            raise UserError(f"model {self.model}: no such version in {self.registry} "
                            f"(see python -m jobs.registry list)")
        return version["model"], version
