"""raypost: LLM post-training on Ray, from raw text to a served model.

Importing the package points every cache (Hugging Face, DeepSpeed's compiled ops, wandb) at
`<repo>/.cache` unless the user set their own, so CI, Ray workers and later runs reuse one place.

It also puts this Python environment's scripts first on PATH, as an activated virtualenv would: DeepSpeed
builds its CPU collective op with the first `ninja` on PATH, and two ninja versions (the system's 1.11, the
venv's 1.13) read each other's build log as a changed command and rebuild the op (about a minute each time)
whenever a job, a Ray worker or a submitted job ran under the other one.
"""
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.setdefault("RAYPOST_CACHE", str(PROJECT_ROOT / ".cache")))

for _var, _sub in (("HF_HOME", "hf"), ("TORCH_EXTENSIONS_DIR", "torch_extensions"), ("WANDB_DIR", "wandb"),
                   ("TRITON_CACHE_DIR", "triton")):
    os.environ.setdefault(_var, str(CACHE_DIR / _sub))
# No network here and no account by default: wandb records offline; sync later with `wandb sync`.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every 2 s and sees a finished run (and a worker group that has
# started) only at its next poll: seconds lost on every short run. A poll is one small RPC per worker. Set
# here, before any ray.init, so the local Ray instance's workers (the controller among them) inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
_SCRIPTS = str(Path(sys.executable).parent)
if not os.environ.get("PATH", "").startswith(_SCRIPTS + os.pathsep):
    os.environ["PATH"] = _SCRIPTS + os.pathsep + os.environ.get("PATH", "")
