"""Storage paths: any path a stage's config names, and its output_dir, may be a URI (s3://, gs://, hdfs://,
file://) reached through pyarrow.fs, so stages on different nodes hand outputs to each other.

    python -m jobs.data jobs/configs/data_demo.yaml output_dir=s3://my-bucket/raypost/data-demo
    python -m jobs.sft jobs/configs/sft_demo.yaml data.path=s3://my-bucket/raypost/data-demo \
        output_dir=s3://my-bucket/raypost/sft-demo

Stages themselves work on local folders: before a stage runs, `localize` fetches every URI its config names
into this node's cache and points the config there, and turns a URI output_dir into a local staging folder;
`publish` uploads that folder when the stage succeeds (a failed stage publishes nothing). Credentials come
from the usual places (AWS_* variables or instance roles, GOOGLE_APPLICATION_CREDENTIALS).
"""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from app import CACHE_DIR
from app.config import Config, UserError

URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_uri(value) -> bool:
    return isinstance(value, str) and bool(URI.match(value))


def _cache_path(uri: str, kind: str) -> Path:
    return CACHE_DIR / kind / hashlib.sha256(uri.encode()).hexdigest()[:16] / (uri.rstrip("/").rsplit("/", 1)[-1] or "root")


def fetch(uri: str) -> Path:
    """A fresh local copy of the file or folder at `uri`."""
    import pyarrow.fs as pafs
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except Exception as exc:  # unknown scheme, no credentials, bucket unreachable...
        raise UserError(f"cannot reach {uri}: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"not found: {uri}")
    local = _cache_path(uri, "storage")
    shutil.rmtree(local, ignore_errors=True)
    (local if info.type == pafs.FileType.Directory else local.parent).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def publish(local: Path, uri: str) -> None:
    """Upload the folder `local` to `uri` (files of the same name are replaced)."""
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def localize(cfg: Config) -> tuple[Config, str | None]:
    """The config with every input URI replaced by a local copy and a URI output_dir by a staging folder;
    returns it with the output URI (None when the output is local)."""
    data = cfg.model_dump()
    target = data.get("output_dir") if is_uri(data.get("output_dir")) else None
    if not target and not _has_uri(data):
        return cfg, None
    data = {k: (v if k == "output_dir" else _fetch_all(v)) for k, v in data.items()}
    if target:
        staging = _cache_path(target, "staging")
        shutil.rmtree(staging, ignore_errors=True)
        data["output_dir"] = str(staging)
    return type(cfg).model_validate(data), target


def _has_uri(node) -> bool:
    if isinstance(node, dict):
        return any(_has_uri(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_uri(v) for v in node)
    return is_uri(node)


def _fetch_all(node):
    if isinstance(node, dict):
        return {k: _fetch_all(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fetch_all(v) for v in node]
    return str(fetch(node)) if is_uri(node) else node
