"""The real entrypoints, as a user runs them: one clear line and exit 2 on bad input."""
import subprocess
import sys

import pytest

from app import PROJECT_ROOT


def job(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)


BAD_INPUT = [
    (["model=no-such-model", "prompt=hi"], "model path not found: no-such-model"),
    (["model=tiny", "promt=hi"], "unknown config key 'promt'"),
    (["model=tiny", "prompt=hi", "max_new_tokens=lots"], "config key 'max_new_tokens'"),
    (["jobs/configs/missing.yaml", "prompt=hi"], "config file not found"),
]


@pytest.mark.slow  # child processes
def test_generate_bad_input_is_one_line():
    """Each bad input in its own process (all four at once: each is one core's worth of imports)."""
    procs = [subprocess.Popen([sys.executable, "-m", "jobs.generate", *args], cwd=PROJECT_ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args, _ in BAD_INPUT]
    for proc, (args, needle) in zip(procs, BAD_INPUT):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (args, stderr)
        assert needle in stderr
        assert "Traceback" not in stderr
        assert [line for line in stderr.splitlines() if line.startswith("error:")] == [stderr.strip().splitlines()[-1]]


CHECK_ONLY = """
import runpy, sys
for stage in sys.argv[1:]:
    sys.argv = [stage, "optim.lrr=1"]
    try:
        runpy.run_module(f"jobs.{stage}", run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 2, (stage, exc.code)
heavy = sorted(m for m in ("torch", "transformers", "deepspeed") if m in sys.modules)
print("heavy modules:", heavy)
"""


@pytest.mark.slow  # a child process
def test_every_job_refuses_a_bad_key_before_loading_torch():
    """The config is checked before the stage's module (and torch) is imported: a typo costs a fraction of a
    second, not the 6-8 s of importing torch and transformers."""
    stages = ["sft", "dpo", "reward", "ppo", "grpo", "eval", "generate", "data", "rejection_sample", "export",
              "harvest", "monitor"]
    result = subprocess.run([sys.executable, "-c", CHECK_ONLY, *stages], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("unknown config key 'optim'") + result.stderr.count("unknown config key 'optim.lrr'") \
        == len(stages), result.stderr
    assert "heavy modules: []" in result.stdout


@pytest.mark.slow  # child processes
def test_generate_tiny_is_seeded_across_processes(tiny):
    from app.generation import generate_chat
    result = job("jobs.generate", "model=tiny", "prompt=hello", "max_new_tokens=8", "temperature=1.0", "seed=7")
    assert result.returncode == 0, result.stderr
    [expected] = generate_chat(*tiny, [[{"role": "user", "content": "hello"}]], 8, temperature=1.0, seed=7)
    assert expected and result.stdout.strip() == expected


def test_demo_data_job_writes_manifest(tmp_path):
    result = job("jobs.demo_data", f"output_dir={tmp_path}", "n_dialogs=50", "n_tickets=5")
    assert result.returncode == 0, result.stderr
    assert str(tmp_path) in result.stdout
    import json
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["n_dialogs"] == 50 and len(manifest["sha256"]) == 8  # incl. documents.jsonl, kb/
    assert str(tmp_path / "kb") in manifest["sha256"] and manifest["counts"]["kb_pages"] == 60
