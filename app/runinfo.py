"""Reproducibility: every run writes a manifest with its config, seed and the sha256 of its data files."""
from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dropped_line(dropped: dict[str, int], why: dict[str, str]) -> str:
    """A run's dropped input by reason as its log and errors say it: "43 longer than data.max_len=192 tokens,
    2 without an assistant reply", or "none dropped" (`why` words each reason; another shows as it is)."""
    return ", ".join(f"{n} {why.get(k, k)}" for k, n in sorted(dropped.items())) or "none dropped"


def sha256_path(path: str | Path) -> str:
    """A file's sha256, or a folder's: over its files' relative paths and contents, in sorted order."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    listing = [(str(p.relative_to(path)), sha256_file(p)) for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def write_manifest(out_dir: str | Path, config: dict, files: list[Path] = (), **extra) -> dict:
    """Write out_dir/manifest.json: config, file hashes, host, time, plus any extra figures."""
    out = Path(out_dir)
    manifest = {"config": config, "sha256": {str(p): sha256_path(p) for p in files},
                "host": platform.node(), "python": platform.python_version(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
