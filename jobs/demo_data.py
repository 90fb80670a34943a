"""Write the embedded demo corpus (seeded): the raw input of the data stage, plus preference pairs and RL
prompts. See app/demo/generate.py for what is planted in it.

    python -m jobs.demo_data                       # -> data/demo/raw/
    python -m jobs.demo_data n_dialogs=20000 seed=1 output_dir=data/demo-big
"""
from __future__ import annotations

from app.cli import Job
from app.config import JobConfig
from app.demo.generate import generate
from app.runinfo import write_manifest


class DemoDataConfig(JobConfig):
    output_dir: str | None = "data/demo/raw"
    n_dialogs: int = 4000
    n_tickets: int = 1000
    n_preferences: int = 1500
    n_prompts: int = 500
    n_arithmetic: int = 300
    n_documents: int = 800  # the shop's pages as raw text (continued pretraining)
    n_kb: int = 60          # knowledge-base pages (and one question each) for retrieval (jobs.index)


def run(cfg: DemoDataConfig) -> dict:
    out = cfg.out("demo_data")
    counts = generate(out, cfg.n_dialogs, cfg.n_tickets, cfg.n_preferences, cfg.n_prompts, cfg.seed, cfg.n_arithmetic,
                      cfg.n_documents, cfg.n_kb)
    files = sorted(p for p in out.iterdir() if p.name != "manifest.json")
    manifest = write_manifest(out, cfg.model_dump(), files, counts=counts)
    print(f"demo data: {sum(counts['dialogs'].values())} dialog lines, {counts['tickets']} tickets, "
          f"{counts['preferences']} preference pairs, {counts['prompts']} prompts, "
          f"{counts['arithmetic']} arithmetic questions, {counts['documents']} documents, "
          f"{counts['kb_pages']} knowledge-base pages -> {out}")
    return manifest


JOB = Job(DemoDataConfig, run, "demo_data.yaml")

if __name__ == "__main__":
    JOB.main()
