"""The data stage's config: `python -m jobs.data jobs/configs/data_demo.yaml [key=value ...]`."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from app.config import Config, JobConfig, SafetySection
from app.records import RAW_KEYS


class InputConfig(Config):
    path: str = "runs/pipeline-demo/demo_data/dialogs.jsonl"  # a file, a folder or a glob; s3://... on a cluster
    kind: Literal["sft", "preference", "prompt"] = "sft"  # dialogs | {prompt, chosen, rejected} | RL prompts
    format: Literal["jsonl", "csv", "parquet"] | None = None  # default: from the file extension
    fields: dict[str, str] = {}  # record key -> source column, e.g. {response: answer, id: ticket_no}

    @field_validator("fields")
    @classmethod
    def known_keys(cls, v: dict) -> dict:
        bad = sorted(set(v) - set(RAW_KEYS))
        if bad:
            raise ValueError(f"unknown record key {bad[0]!r} (allowed: {', '.join(RAW_KEYS)})")
        return v


class NormalizeConfig(Config):
    rules: list[tuple[str, str]] = []  # [regex, replacement] applied after the built-in steps


class FiltersConfig(Config):
    min_words: int = 10  # of the final reply; CJK characters count 1/cjk_chars_per_word each
    max_words: int = 200
    cjk_chars_per_word: float = 1.5
    max_symbol_ratio: float = 0.1
    max_digit_ratio: float = 0.5
    max_dup_line_share: float = 0.3
    min_distinct_share: float = 0.25  # distinct tokens / tokens, from 10 tokens on ("buy now" x 12 is 0.08)
    languages: list[Literal["en", "zh", "other"]] | None = None  # e.g. [en, zh]; None keeps all
    quality_model: str | None = None  # "module:function": list of replies -> scores in [0, 1]
    quality_threshold: float = 0.5
    toxicity: SafetySection | None = None  # dialogs whose reply scores >= its threshold are rejected ("toxic")


class PiiConfig(Config):
    action: Literal["redact", "drop", "off"] = "redact"
    sensitive_words_file: str | None = None  # default: app/sensitive_words.txt
    sensitive_action: Literal["drop", "flag", "off"] = "drop"


class DedupConfig(Config):
    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard of shingle sets
    num_perm: int = 128
    bands: int = 16  # rows per band = num_perm // bands
    word_shingle: int = 5  # the longest shingles, for texts of 65+ tokens; shorter ones get n // 13
    char_shingle: int = 5
    min_shingle: int = 2  # = word_shingle and char_shingle for one fixed size (app/data/dedup.py)

    @model_validator(mode="after")
    def bands_fit(self):
        if not 1 <= self.bands <= self.num_perm:
            raise ValueError(f"bands must be between 1 and num_perm ({self.num_perm})")
        return self


class SplitConfig(Config):
    ratios: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train, val, test
    stratify: bool = True  # by intent, when records have one
    max_class_share: float | None = 0.3
    contamination_ngram: int = 13
    contamination_threshold: float | None = 0.8  # share of a train record's n-grams found in val/test
    contamination_reference: list[str] = []  # other outputs' splits (the SFT test/) that train must not overlap


class AugmentConfig(Config):
    """app/data/augment.py: augmented copies of train records (sft kind), cleaned like the input."""
    enabled: bool = False
    ops: list[Literal["synonym", "delete", "swap", "back_translate", "paraphrase"]] = ["synonym", "delete", "swap"]
    copies: int = Field(1, ge=1)           # augmented copies per train record
    target: Literal["user", "assistant", "both"] = "user"  # whose turns change
    synonym_p: float = Field(0.3, ge=0, le=1)  # chance that a word with synonyms is replaced
    delete_p: float = Field(0.05, ge=0, lt=1)  # the seeds' random deletion of 5%
    swap_n: int = Field(1, ge=0)           # word pairs swapped
    synonyms_file: str | None = None       # default: app/data/synonyms.txt (EN and ZH groups)
    back_translate: str = "app.data.augment:model_back_translate"  # module:function, (texts, langs) -> texts
    paraphrase: str = "app.data.augment:model_paraphrase"


class DataConfig(JobConfig):
    input: InputConfig = InputConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    filters: FiltersConfig = FiltersConfig()
    pii: PiiConfig = PiiConfig()
    dedup: DedupConfig = DedupConfig()
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    batch_size: int = 512
    wandb: bool = False

    @model_validator(mode="after")
    def augment_sft_only(self):
        if self.augment.enabled and self.input.kind != "sft":
            raise ValueError("augment is for sft records (input.kind: sft)")
        return self
