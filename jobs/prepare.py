"""One-time set-up that `make setup` runs after the installs, so no job pays for it on first use: convert the
bundled SmolLM2 (GGUF -> safetensors), the tiny test model and the retrieval embedder into .cache/models/.
Reused afterwards; a job still converts a model itself when the cache was cleared.

    python -m jobs.prepare
"""
from __future__ import annotations

import time

from app.models import materialize


def main() -> None:
    start = time.time()
    for alias in ("smollm2-135m-instruct", "tiny", "tiny-vllm", "tiny-vllm-untied", "all-minilm-l6-v2"):
        print(f"prepare: model {alias} -> {materialize(alias)}", flush=True)
    print(f"prepare: done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
