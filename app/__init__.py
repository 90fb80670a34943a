"""raypost: LLM post-training on Ray, from raw text to a served model.

Importing the package points every cache (Hugging Face, DeepSpeed's compiled ops, wandb) at
`<repo>/.cache` unless the user set their own, so CI, Ray workers and later runs reuse one place.
"""
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.setdefault("RAYPOST_CACHE", str(PROJECT_ROOT / ".cache")))

for _var, _sub in (("HF_HOME", "hf"), ("TORCH_EXTENSIONS_DIR", "torch_extensions"), ("WANDB_DIR", "wandb"),
                   ("TRITON_CACHE_DIR", "triton")):
    os.environ.setdefault(_var, str(CACHE_DIR / _sub))
# No network here and no account by default: wandb records offline; sync later with `wandb sync`.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
