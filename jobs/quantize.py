"""Quantize a model to INT8 and compare it with the original (size, decode speed, perplexity).

    python -m jobs.quantize model=smollm2-135m-instruct
    python -m jobs.quantize model=runs/pipeline-demo/sft/final name=sft-int8 data=runs/pipeline-demo/data/test

CPU: weight-only int8 with per-channel scales (see app/int8.py for why not dynamic quantization);
GPU: bitsandbytes 8-bit. Output: runs/quantize-<name>/model (serve it with serve_configs/int8.yaml) and
comparison.json.
"""
from app.cli import Job
from app.compress.config import QuantizeConfig

JOB = Job(QuantizeConfig, "app.compress.quantize:run")

if __name__ == "__main__":
    JOB.main()
