"""Run the stages as a resumable DAG (see app/ops/pipeline.py) and print a closing summary.

    python -m jobs.pipeline jobs/configs/demo.yaml                 # make demo
    python -m jobs.pipeline jobs/configs/demo.yaml --from ppo      # force ppo and what depends on it
    python -m jobs.pipeline jobs/configs/demo.yaml stages.sft.overrides='[optim.lr=1e-4]'
    ray job submit --working-dir . -- python -m jobs.pipeline jobs/configs/demo.yaml
"""
from __future__ import annotations

import sys

from app.ops import pipeline, summary
from app.cli import run_job


def run(cfg: pipeline.PipelineConfig) -> dict:
    result = pipeline.run(cfg)
    print("\n" + "\n".join(summary.lines(result["stages"], {n: s.job for n, s in cfg.stages.items()},
                                         result["seconds"])))
    if cfg.parallel > 1:
        print(f"(up to {cfg.parallel} stages ran at once: the speed figures of a stage that ran beside another, "
              "TTFT and tok/s, are lower than alone)")
    print(f"pipeline: {len(result['stages'])} stages -> {result['root']}")
    return result


def main(argv: list[str]) -> None:
    if "--from" in argv:  # `--from <stage>` reads better than start_from=<stage>
        i = argv.index("--from")
        argv = argv[:i] + [f"start_from={argv[i + 1] if i + 1 < len(argv) else ''}"] + argv[i + 2:]
    run_job(pipeline.PipelineConfig, run, default_config="demo.yaml", argv=argv)


if __name__ == "__main__":
    main(sys.argv[1:])
