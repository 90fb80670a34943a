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
    assert manifest["config"]["n_dialogs"] == 50 and len(manifest["sha256"]) == 5  # incl. arithmetic.jsonl
