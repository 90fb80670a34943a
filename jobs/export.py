"""Export a model to ONNX (with its KV cache) and check it on ONNX Runtime against PyTorch.

    python -m jobs.export format=onnx model=smollm2-135m-instruct
    python -m jobs.export format=onnx model=registry:latest-promoted data=runs/pipeline-demo/data/test

Output: runs/export-<name>/model (serve it with `engine: onnx`, serve_configs/onnx.yaml) and comparison.json:
greedy tokens equal to PyTorch's on the eval prompts, decode tokens/s and size against PyTorch fp32 and our
INT8 model (app/int8.py). See app/onnx.py.
"""
from app.cli import Job
from app.compress.config import ExportConfig

JOB = Job(ExportConfig, "app.compress.export:run")

if __name__ == "__main__":
    JOB.main()
