"""Training checkpoints: what each worker writes, how completeness is checked, which ones are kept.

A checkpoint directory (merged from all workers by Ray Train) holds DeepSpeed's model/optimizer/scheduler
states under ds/, the trainable weights as trainable.safetensors (rank 0), and per rank a
manifest-rank<r>.json (sha256 of that rank's files, step, data position, RNG states) written before its
complete-rank<r> marker. A checkpoint is complete when every rank's marker is there and every hash
matches; an incomplete or corrupt one is skipped for the previous complete one, with a warning.
Retention is Ray's (CheckpointConfig): the `keep` best by validation loss, and always the latest.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from app.runinfo import sha256_file

log = logging.getLogger(__name__)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def finish(folder: Path, rank: int, world: int, state: dict) -> None:
    """Write this rank's manifest (hashes of the files it wrote) and then its complete marker."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _owned_by(p.name, rank))
    manifest = {"rank": rank, "world": world, **state,
                "sha256": {str(p.relative_to(folder)): sha256_file(p) for p in files}}
    (folder / f"manifest-rank{rank}.json").write_text(json.dumps(manifest, indent=1))
    (folder / f"complete-rank{rank}").write_text("ok")


def _owned_by(name: str, rank: int) -> bool:
    """Files a rank writes: DeepSpeed names its shards by rank; rank 0 writes the shared ones."""
    if name.startswith(("manifest-rank", "complete-rank")):
        return False
    if name.startswith("rng-rank"):
        return name == f"rng-rank{rank}.pt"
    if "_rank_" in name and name.startswith("zero_pp_rank_"):
        return name.startswith(f"zero_pp_rank_{rank}_")
    return rank == 0


def is_complete(folder: Path) -> tuple[bool, str]:
    manifests = sorted(folder.glob("manifest-rank*.json"))
    if not manifests:
        return False, "no manifest"
    world = json.loads(manifests[0].read_text())["world"]
    for rank in range(world):
        if not (folder / f"complete-rank{rank}").exists():
            return False, f"rank {rank} did not finish writing"
        for rel, digest in json.loads((folder / f"manifest-rank{rank}.json").read_text())["sha256"].items():
            if not (folder / rel).is_file() or sha256_file(folder / rel) != digest:
                return False, f"{rel} is missing or changed"
    return True, ""


def state_of(folder: Path) -> dict:
    return json.loads((folder / "manifest-rank0.json").read_text())


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints under a Ray Train run directory, oldest step first; warns about the others."""
    found = []
    for folder in sorted(f for f in run_dir.glob("checkpoint_*") if f.is_dir()):
        ok, why = is_complete(folder)
        if ok:
            found.append(folder)
        else:
            log.warning("skipping checkpoint %s: %s", folder, why)
    return sorted(found, key=lambda f: state_of(f)["step"])


def pick_resume(latest: Path | None) -> Path | None:
    """The checkpoint to resume from: Ray's latest if complete, else the newest complete sibling."""
    if latest is None:
        return None
    ok, why = is_complete(latest)
    if ok:
        return latest
    log.warning("checkpoint %s is not usable (%s); falling back to the previous complete one", latest, why)
    earlier = complete_checkpoints(latest.parent)
    return earlier[-1] if earlier else None
