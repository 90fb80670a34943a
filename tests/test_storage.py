"""Storage URIs through pyarrow.fs (file:// here; s3:// and gs:// take the same path): a stage publishes its
output to a URI, the next stage reads its input from that URI, a failed stage publishes nothing."""
from __future__ import annotations

import json

import pytest

from app.cli import run_job
from app.data.config import DataConfig
from app.data.stage import run as run_data
from app.demo.generate import generate
from app.compress.quantize import QuantizeConfig
from app.compress.quantize import run as run_quantize
from app.storage import fetch


def test_stages_hand_outputs_over_through_uris(ray_local, tmp_path):
    raw = tmp_path / "raw"
    generate(raw, n_dialogs=300, n_tickets=10, n_preferences=4, n_prompts=4, seed=0)
    bucket = f"file://{tmp_path}/bucket"
    with pytest.raises(SystemExit):  # the input is not in the bucket yet: a clear error, nothing published
        run_job(DataConfig, run_data, argv=["jobs/configs/data_demo.yaml", f"input.path={bucket}/raw/dialogs.jsonl",
                                            f"output_dir={bucket}/data"])
    assert not (tmp_path / "bucket" / "data").exists()

    run_job(DataConfig, run_data, argv=["jobs/configs/data_demo.yaml", f"input.path=file://{raw}/dialogs.jsonl",
                                        f"output_dir={bucket}/data", "wandb=false"])
    published = tmp_path / "bucket" / "data"
    assert (published / "manifest.json").is_file() and list((published / "test").glob("*.parquet"))

    result = run_job(QuantizeConfig, run_quantize, argv=["model=tiny", f"data={bucket}/data/test", "max_texts=4",
                                                         "decode_tokens=8", f"output_dir={bucket}/int8"])
    comparison = json.loads((tmp_path / "bucket" / "int8" / "comparison.json").read_text())
    assert comparison["int8"]["perplexity"] == result["int8"]["perplexity"] > 0
    assert (tmp_path / "bucket" / "int8" / "model" / "config.json").is_file()


def test_fetch_names_what_is_missing(tmp_path):
    from app.config import UserError
    with pytest.raises(UserError, match="not found: file://"):
        fetch(f"file://{tmp_path}/nothing-here")
    with pytest.raises(UserError, match="cannot reach nosuch://x"):
        fetch("nosuch://x")
