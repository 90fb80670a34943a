"""The model registry and the release gate.

A version is a record in a SQLite file (default runs/registry.sqlite): model path, data manifest hash,
config, metrics, time, and whether it is promoted. `latest-promoted` is the version serving uses by
default; rollback demotes it, so the previous promoted version takes its place.

    python -m jobs.registry list | show <id> | promote <id> | rollback

The gate compares key metrics with a baseline: a relative drop beyond the tolerance (default 5%, the
seeds' rollback rule) on any of them fails. Lower-is-better metrics (perplexity, latency) count a rise
as the drop.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

LOWER_IS_BETTER = {"perplexity", "ttft_ms", "latency_ms", "peak_memory_gb"}
SCHEMA = """CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, model TEXT, data_sha256 TEXT, config TEXT,
    metrics TEXT, created TEXT, promoted INTEGER DEFAULT 0, promoted_at REAL)"""


class Registry:
    def __init__(self, path: str | Path = "runs/registry.sqlite"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.row_factory = sqlite3.Row
        self.db.execute(SCHEMA)

    def register(self, name: str, model: str, metrics: dict, config: dict | None = None,
                 data_sha256: str | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO versions (name, model, data_sha256, config, metrics, created) VALUES (?, ?, ?, ?, ?, ?)",
            (name, model, data_sha256, json.dumps(config or {}), json.dumps(metrics),
             time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        self.db.commit()
        return int(cur.lastrowid)

    def get(self, ref: int | str) -> dict | None:
        """A version by id, or 'latest-promoted' / 'latest'."""
        if ref == "latest-promoted":
            row = self.db.execute("SELECT * FROM versions WHERE promoted = 1 ORDER BY promoted_at DESC, id DESC "
                                  "LIMIT 1").fetchone()
        elif ref == "latest":
            row = self.db.execute("SELECT * FROM versions ORDER BY id DESC LIMIT 1").fetchone()
        elif str(ref).isdigit():
            row = self.db.execute("SELECT * FROM versions WHERE id = ?", (int(ref),)).fetchone()
        else:
            return None
        return _row(row) if row else None

    def list(self) -> list[dict]:
        return [_row(r) for r in self.db.execute("SELECT * FROM versions ORDER BY id")]

    def promote(self, version: int) -> None:
        if self.get(version) is None:
            raise KeyError(f"no version {version}")
        self.db.execute("UPDATE versions SET promoted = 1, promoted_at = ? WHERE id = ?", (time.time(), version))
        self.db.commit()

    def rollback(self) -> dict | None:
        """Demote the current promoted version; returns the one now current (or None)."""
        current = self.get("latest-promoted")
        if current is None:
            raise KeyError("no promoted version to roll back")
        self.db.execute("UPDATE versions SET promoted = 0 WHERE id = ?", (current["id"],))
        self.db.commit()
        return self.get("latest-promoted")


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["config"], d["metrics"] = json.loads(d["config"]), json.loads(d["metrics"])
    d["promoted"] = bool(d["promoted"])
    return d


def gate(metrics: dict, baseline: dict, keys: list[str], tolerance: float = 0.05) -> tuple[bool, list[dict]]:
    """(passed, one row per key metric). A missing metric on either side fails that row."""
    rows = []
    for key in keys:
        new, old = metrics.get(key), baseline.get(key)
        if new is None or old is None:
            rows.append({"metric": key, "baseline": old, "new": new, "change": None, "ok": False})
            continue
        change = (new - old) / abs(old) if old else (0.0 if new == old else float("inf"))
        drop = change if key in LOWER_IS_BETTER else -change
        rows.append({"metric": key, "baseline": old, "new": new, "change": change, "ok": drop <= tolerance})
    return all(r["ok"] for r in rows), rows


def gate_table(rows: list[dict]) -> str:
    lines = ["| metric | baseline | new | change | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        change = "n/a" if r["change"] is None else f"{r['change']:+.1%}"
        lines.append(f"| {r['metric']} | {r['baseline']} | {r['new']} | {change} | {'ok' if r['ok'] else 'REGRESSION'} |")
    return "\n".join(lines)
