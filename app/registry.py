"""The model registry: every evaluated model is a version (model path, data manifest hash, config,
metrics, its eval folder with the per-item results, the version it derives from, the gate's verdict) in one
SQLite file, runs/registry.sqlite, which evaluation, the pipeline, serving and jobs.registry all share.

    python -m jobs.registry list | show <id> | promote <id> | rollback

`latest-promoted` is what serving uses (`model: registry:latest-promoted`); rollback demotes it, so the
previous promoted version takes its place. Every promotion and rollback is also an event (time, version,
the version now current, why): the history `jobs.registry report` draws. The release gate itself is
app/eval/gate.py.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

DEFAULT = "runs/registry.sqlite"
COLUMNS = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "name": "TEXT", "model": "TEXT", "data_sha256": "TEXT",
           "config": "TEXT", "metrics": "TEXT", "created": "TEXT", "promoted": "INTEGER DEFAULT 0",
           "promoted_at": "REAL", "eval_dir": "TEXT", "parent": "INTEGER", "verdict": "TEXT", "human": "TEXT"}
JSON_COLUMNS = ("config", "metrics", "verdict", "human")


def default_path() -> str:
    """RAYPOST_REGISTRY, else runs/registry.sqlite (relative to where the job runs)."""
    return os.environ.get("RAYPOST_REGISTRY", DEFAULT)


class Registry:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path or default_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Writers from several processes (parallel pipeline stages, two evaluations) wait for each other's
        # short transactions: up to 30 s before "database is locked" (sqlite3's default is 5 s).
        self.db = sqlite3.connect(str(self.path), timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"CREATE TABLE IF NOT EXISTS versions ({', '.join(f'{k} {t}' for k, t in COLUMNS.items())})")
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(versions)")}
        for name in COLUMNS.keys() - have:  # a registry written before a column existed
            self.db.execute(f"ALTER TABLE versions ADD COLUMN {name} {COLUMNS[name]}")
        self.db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, "
                        "kind TEXT, version INTEGER, current INTEGER, reason TEXT)")
        self.db.commit()

    def register(self, name: str, model: str, metrics: dict, config: dict | None = None,
                 data_sha256: str | None = None, eval_dir: str | None = None, parent: int | None = None,
                 verdict: dict | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO versions (name, model, data_sha256, config, metrics, created, eval_dir, parent, verdict) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, model, data_sha256, json.dumps(config or {}), json.dumps(metrics),
             time.strftime("%Y-%m-%dT%H:%M:%S%z"), eval_dir, parent, json.dumps(verdict or {})))
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

    def promote(self, version: int, reason: str = "") -> None:
        if self.get(version) is None:
            raise KeyError(f"no version {version}")
        self.db.execute("UPDATE versions SET promoted = 1, promoted_at = ? WHERE id = ?", (time.time(), version))
        self._event("promote", version, version, reason)

    def rollback(self, reason: str = "") -> dict | None:
        """Demote the current promoted version; returns the one now current (or None)."""
        current = self.get("latest-promoted")
        if current is None:
            raise KeyError("no promoted version to roll back")
        self.db.execute("UPDATE versions SET promoted = 0 WHERE id = ?", (current["id"],))
        now = self.get("latest-promoted")
        self._event("rollback", current["id"], now and now["id"], reason)
        return now

    def record_human(self, version: int, result: dict, reason: str) -> None:
        """The aggregate of a version's filled human evaluation sheets (app/eval/human.py), with an event."""
        if self.get(version) is None:
            raise KeyError(f"no version {version}")
        self.db.execute("UPDATE versions SET human = ? WHERE id = ?", (json.dumps(result), version))
        self._event("human", version, version, reason)

    def events(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM events ORDER BY id")]

    def _event(self, kind: str, version: int, current: int | None, reason: str) -> None:
        self.db.execute("INSERT INTO events (time, kind, version, current, reason) VALUES (?, ?, ?, ?, ?)",
                        (time.time(), kind, version, current, reason))
        self.db.commit()


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    for key in JSON_COLUMNS:
        d[key] = json.loads(d[key]) if d[key] else {}
    d["promoted"] = bool(d["promoted"])
    return d
