"""The compression jobs' configs: structured pruning + distillation (jobs.compress), INT8 (jobs.quantize) and
ONNX export (jobs.export). Light on purpose (no torch).

    python -m jobs.compress jobs/configs/compress_demo.yaml
    python -m jobs.quantize model=runs/pipeline-demo/sft/final
    python -m jobs.export format=onnx model=runs/pipeline-demo/sft/final
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.config import JobConfig


class QuantizeConfig(JobConfig):
    model: str = "smollm2-135m-instruct"
    name: str = "int8"
    data: str = "runs/pipeline-demo/data/test"   # texts for the perplexity comparison (the data stage's test split)
    max_texts: int = 40
    max_len: int = 256
    decode_tokens: int = 64
    threads: int | None = None          # torch threads for the speed comparison (None: torch's default)
    # Linear layers kept in full precision. lm_head by default: its bf16 logits (3 significant digits) break
    # greedy ties and the end-of-answer token (measured on the demo's GRPO model: 7 of 64 held-out answers
    # changed, 5 ran past their end); tied to the embedding, it costs no extra bytes.
    skip: list[str] = ["lm_head"]


class ExportConfig(JobConfig):
    """jobs.export: the ONNX graph (app/onnx.py; the job: app/compress/export.py), then greedy equality with PyTorch on the eval
    prompts and decode speed and size against PyTorch fp32 and our INT8 model."""
    model: str = "smollm2-135m-instruct"
    format: Literal["onnx"] = "onnx"
    name: str = "onnx"
    data: str = "runs/pipeline-demo/data/test"   # eval prompts for the greedy check (the data stage's test split)
    prompts: int = Field(16, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    decode_tokens: int = Field(64, ge=1)        # tokens per speed run (no stop at the end token)
    threads: int | None = None                  # torch and ONNX Runtime threads (None: their defaults)
    fusions: Literal["none", "cpu"] = "none"    # cpu: fuse into ONNX Runtime's CPU ops (runs only on ORT)
    int8_skip: list[str] = ["lm_head"]          # as jobs.quantize's skip: the INT8 model it is compared with


class CompressConfig(JobConfig):
    """jobs.compress (app/compress/compress.py): prune a trained model, then distill the pruned one from it."""
    teacher: str = "runs/pipeline-demo/sft/final"
    data: str = "runs/pipeline-demo/data"       # an SFT data stage output: calibration rows from train/
    calibration_samples: int = Field(64, ge=1)
    calibration_max_len: int = Field(256, ge=8)
    drop_layers: int = Field(0, ge=0)           # whole decoder layers removed (least Block Influence)
    mlp_keep: float = Field(1.0, gt=0, le=1)    # share of each remaining layer's MLP channels kept
    distill: str = "jobs/configs/sft_demo.yaml"  # the SFT config the distillation runs (model, teacher, data set here)
    overrides: list[str] = []                   # key=value on top of it, e.g. [method=full, train.max_steps=40]
