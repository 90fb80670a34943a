"""One config mechanism: a YAML file plus dotted `key=value` overrides -> a typed config per job.

    python -m jobs.<stage> jobs/configs/<stage>_demo.yaml optim.lr=1e-4 name=try2

Configs are pydantic models that forbid unknown keys, so a typo fails at start naming the key and the
keys allowed at that level. A job's `run(cfg)` reads its config, and so do the trainers' workers
(app/train/loop.py re-validates it there); library code takes flat arguments.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, get_args, get_origin

import yaml
from pydantic import Field, BaseModel, ConfigDict, ValidationError


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2, no traceback."""


class ConfigError(UserError):
    pass


class Config(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class VLLMSection(Config):
    """A vLLM engine's size (app/vllm_engine.py): the KV cache in MiB on CPU, a share of GPU memory on GPU."""
    kv_cache_mb: int = Field(512, ge=16)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int | None = 2048   # None: the model's own context


class SafetySection(Config):
    """What counts as unsafe (app/safety.py): the toxicity scorer and seed 000's threshold (unsafe at >= 0.3)."""
    scorer: str = "auto"  # lexicon | classifier (lexicon + alt-profanity-check, English) | auto | module:function
    threshold: float = Field(0.3, gt=0, le=1)


class JobConfig(Config):
    """Keys every job shares."""
    name: str = "demo"
    output_dir: str | None = None  # default: runs/<stage>-<name>
    seed: int = 0

    def out(self, stage: str) -> Path:
        return Path(self.output_dir or f"runs/{stage}-{self.name}")


def load_config(cls: type[Config], path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Build `cls` from a YAML file (optional) and `key=value` overrides (dotted keys reach nested sections)."""
    data = read_yaml(path) if path else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        set_dotted(data, key.strip(), parse_value(raw))
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain(cls, exc)) from None


def load_callable(spec: str):
    """A plugin named in a config as "package.module:function"."""
    import importlib
    module, sep, name = spec.partition(":")
    try:
        if not sep:
            raise ImportError
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"cannot load {spec!r}: give an importable module:function") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"bad YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_value(raw: str) -> Any:
    """Override values stay strings (pydantic coerces numbers and booleans by the field's type), except
    lists/mappings written in YAML flow style and null."""
    raw = raw.strip()
    if raw[:1] in "[{":
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse override value {raw!r}: {exc}") from None
    return None if raw.lower() in ("null", "none", "~") else raw


def set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parents[:i + 1])} is a value, not a section")
        node = child
    node[leaf] = value


def allowed_keys(cls: type[Config], loc: tuple) -> list[str]:
    """The field names of the section that `loc` (a path of keys) points into; a `dict[str, Section]` field
    takes one free key (`stages.<name>.job`)."""
    model, parts = cls, list(loc)
    while parts:
        field = model.model_fields.get(parts.pop(0)) if isinstance(parts[0], str) else None
        sub = getattr(field, "annotation", None) if field else None
        if get_origin(sub) is dict and parts:
            sub = get_args(sub)[1]
            parts.pop(0)
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            break
        model = sub
    return list(model.model_fields)


def explain(cls: type[Config], exc: ValidationError) -> str:
    """One line per problem: the dotted key, what is wrong, and for unknown keys what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}' (allowed: {', '.join(allowed_keys(cls, loc[:-1]))})")
        elif err["type"] == "missing":
            lines.append(f"missing config key '{key}' (give it in the YAML or as {key}=...)")
        else:
            lines.append(f"config key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)
