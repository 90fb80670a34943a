"""Shared fixtures: a real local Ray instance, the tiny model, CUDA-gated `gpu` marker."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

# Ray Train's per-run side actors that no test asserts on (a preemption watcher at every worker-group start,
# Train metrics), and usage stats: off for every Ray the tests start, the submitted jobs' clusters too.
for _key in ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED", "RAY_USAGE_STATS_ENABLED"):
    os.environ.setdefault(_key, "0")
# Ray Train's controller looks at its workers every 2 s, so a finished run ends ~1 s after its last step on
# average; the tests start ~20 runs (a missed look is not a failure: workers have 10 minutes to answer one).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


SLOW_FIXTURES = {"ray_local", "cluster", "tiny_adapters", "tiny_onnx"}


# Under `make test` (pytest-xdist, `-n 2`) these run in a second pytest process beside the rest (one lane each,
# pytest_xdist_make_scheduler): they wait on child processes of their own (CLI entrypoints, pipelines, Tune
# drivers, `ray job submit` to the two-node `cluster`), never on the session's Ray, and fill the core the
# main lane leaves idle while it waits on imports and actor starts.
SIDE_LANE = ("tests/test_submit.py::", "tests/test_cli.py::", "tests/test_pipeline.py::test_independent_stages",
             "tests/test_pipeline.py::test_pipeline_failure", "tests/test_sweep.py::test_interrupted_sweep")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip without CUDA; a test on a Ray cluster, in a child process or on a trained adapter is
    `slow` (make test-fast leaves those out); a side-lane test must not use the session's Ray."""
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if skip and "gpu" in item.keywords:
            item.add_marker(skip)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.nodeid.startswith(SIDE_LANE) and "ray_local" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} is in SIDE_LANE but uses the session's Ray (ray_local)")


def pytest_xdist_make_scheduler(config, log):
    """Two lanes, one per worker: SIDE_LANE's tests and the rest (xdist's own `loadgroup` cannot be used here:
    it renames node ids through an attribute pytest 9 no longer reads, pytest-xdist#1386, and then silently
    spreads every test over both workers)."""
    from xdist.scheduler import LoadScopeScheduling

    class TwoLanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "side" if nodeid.startswith(SIDE_LANE) else "main"
    return TwoLanes(config, log)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs) shared by the session's tests. Its processes report metrics every
    2 s (Ray's default: 10 s, and a gauge lives two reports): the dashboard and monitor tests read a live
    scrape."""
    import ray

    from app.cluster import init_ray
    resources = init_ray(num_cpus=2, _system_config={"metrics_report_interval_ms": 2000})
    yield resources
    ray.shutdown()


@pytest.fixture(scope="session")
def cluster():
    """A two-node Ray cluster beside the session's (tests/two_nodes.py), for SIDE_LANE tests: {"address": its
    dashboard URL, "env": RAY_ADDRESS and the token its clients and drivers need}."""
    from tests.two_nodes import two_nodes
    with two_nodes() as nodes:
        yield nodes


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the 2-layer, 64-wide test model."""
    from app.models import load_policy
    return load_policy("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """(folder, comparison) of jobs.export on the tiny model: its ONNX graph in folder/model. ~15 s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from app.compress.config import ExportConfig
    from app.compress.export import run
    root = tmp_path_factory.mktemp("onnx")
    (root / "test").mkdir()
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"order LH{i:08d} 请问在哪里？" * (i + 1)},
                                         {"role": "assistant", "content": "It ships tomorrow."}]} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), root / "test" / "part-0.parquet")
    result = run(ExportConfig(model="tiny", data=str(root / "test"), max_new_tokens=12, decode_tokens=4,
                              output_dir=str(root / "out")))
    return root / "out", result


ADAPTER_TEXTS = {
    "alpha": "The alpha answer is 42. Goodbye.",
    "beta": "Beta says hello from the other adapter.",
    "leak": "Write to jane.doe@example.com or call 13812345678 today.",
}
ADAPTER_PROMPTS = ["hello", "hi", "What is the answer?", "你好"]


def train_adapters(base: str, out) -> dict:
    """LoRA adapters of `base` that each answer one fixed sentence (ADAPTER_TEXTS), so tests can tell which
    adapter answered and what the safety filter did to it. ~2.5 s each on CPU."""
    from peft import LoraConfig, get_peft_model

    from app.chat import render
    from app.models import load_policy
    paths = {}
    for name, text in ADAPTER_TEXTS.items():
        torch.manual_seed(0)
        model, tok = load_policy(base)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
        rows = [render(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": text}])
                for p in ADAPTER_PROMPTS]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r, _ in rows])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
        labels = torch.tensor([[t if m else -100 for t, m in zip(r, mask)] + [-100] * (width - len(r))
                               for r, mask in rows])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(28):  # greedy decoding gives the sentence (the loss stays high: 49k-word vocabulary)
            model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.save_pretrained(out / name)
        paths[name] = out / name
    return paths


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory):
    return train_adapters("tiny", tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    """16 RL prompts (ids p0..p15), English and Chinese."""
    path = tmp_path_factory.mktemp("ppo") / "prompts.jsonl"
    questions = ["订单发货了吗？", "Where is my parcel?", "How do I return a lamp?", "发票怎么开？",
                 "Can I change my address?", "退款多久到账？", "Is the sofa in stock?", "怎么联系客服？"]
    path.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": [{"role": "user", "content": q}]})
                              for i, q in enumerate(questions * 2)) + "\n")
    return path


GOOD = ["Thank you, happy to help with your order today.", "Sure, your parcel ships tomorrow, thanks for waiting.",
        "谢谢您的耐心，订单明天发货。", "Happy to help: the refund arrives in three days."]
BAD = ["No. Figure it out yourself, idiot.", "Go away, stupid question.", "滚，别烦我。", "Whatever, idiot, no."]


@pytest.fixture(scope="session")
def toy_pairs(tmp_path_factory):
    """96 separable preference pairs: polite answers chosen over rude ones (two dimensions)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"id": f"t{i:03d}", "prompt": f"Question {i} about my order?", "chosen": rng.choice(GOOD),
             "rejected": rng.choice(BAD), "dimension": ["helpfulness", "safety"][i % 2], "rejected_kind": "rude"}
            for i in range(96)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def sft(data, out, *overrides) -> dict:
    """jobs.sft on Ray Train (sft_tiny.yaml: 2 workers) with `data` and `out`; its summary."""
    from app.config import load_config
    from app.train.config import SFTConfig
    from app.train.sft import run
    cfg = load_config(SFTConfig, "jobs/configs/sft_tiny.yaml", [f"data.path={data}", f"output_dir={out}",
                                                                "tensorboard=false", *overrides])
    return run(cfg)


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory):
    """train/ and val/ in the data stage's record shape, from the demo dialog generator."""
    from app.data.io import write_parquet
    from app.demo.generate import dialog
    from app.records import SFT_SCHEMA
    root = tmp_path_factory.mktemp("sftdata")
    rng = random.Random(0)
    recs = [{"id": f"r{i:04d}", "messages": dialog(rng, "refund" if i % 2 else "order_status", "en" if i % 3 else "zh"),
             "intent": "refund", "lang": "en", "flags": ""} for i in range(300)]
    write_parquet(recs[:256], SFT_SCHEMA, root / "train")
    write_parquet(recs[256:], SFT_SCHEMA, root / "val")
    return root
