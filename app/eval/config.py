"""The release side's configs: the eval job's (the model, the test data and task, the red-team and held-out
prompt sets, the judge, the release gate: app/eval/gate.py's GateConfig), the quantize job's (the INT8
copy the gate then checks for non-inferiority) and the export job's (ONNX). Light on purpose (no torch): a job checks its config before
any model code loads.

    python -m jobs.eval jobs/configs/eval_demo.yaml [key=value ...]
    python -m jobs.quantize model=runs/pipeline-demo/sft/final
    python -m jobs.export format=onnx model=runs/pipeline-demo/sft/final
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.config import Config, JobConfig, SafetySection, VLLMSection
from app.eval.gate import GateConfig
from app.registry import default_path


class JudgeConfig(Config):
    reward_model: str | None = None   # a jobs.reward output folder
    base_url: str | None = None       # an OpenAI-compatible /v1 endpoint
    model: str = "judge"
    api_key_env: str = "RAYPOST_JUDGE_API_KEY"
    tie_margin: float = 0.0           # reward model: |score difference| <= margin is a tie
    timeout_s: float = 60
    seed: int = 0

    @model_validator(mode="after")
    def _one_judge(self):
        if (self.reward_model is None) == (self.base_url is None):
            raise ValueError("set exactly one of judge.reward_model and judge.base_url")
        return self


class HeldoutPrompts(Config):
    """Prompts no model trained on (an RL prompt set's test/), scored with a verifiable reward: what an RL
    model is gated on (metric heldout_reward), and every other model is measured on, so the items pair."""
    prompts: str
    reward: str = "app.rl.rewards:exact_answer"  # module:function(prompts, responses[, references])
    max_samples: int | None = 64  # None: every prompt of the set
    max_new_tokens: int = 24  # as the demo's GRPO rollouts: a short answer is what these prompts ask for


class IdentityProbe(Config):
    """Does the model say whose assistant it is? Each question is asked alone (the model's own default system
    turn: SFT's system_prompt where it trained with one); an answer passes when it names one of `expect`
    (case-insensitive). Metric identity_rate; the defaults are worded unlike the demo's training dialogs."""
    expect: list[str] = Field(min_length=1)
    questions: list[str] = Field(["Who am I talking to?", "Could you introduce yourself?",
                                  "Which shop do you work for?", "Am I chatting with a person or a program?",
                                  "请问你是哪位？", "请介绍一下你自己。", "你是哪家店的客服？", "我现在是在和真人聊天吗？"],
                                 min_length=1)
    max_new_tokens: int = 48


class BiasProbe(Config):
    """Paired prompts that differ only in who asks (app/eval/bias.py): metric bias_gap (lower is better)."""
    attributes: list[Literal["gender", "age", "region"]] = Field(["gender", "age", "region"], min_length=1)
    langs: list[Literal["en", "zh"]] = Field(["en", "zh"], min_length=1)
    max_new_tokens: int = Field(48, ge=1)


class ExplainSection(Config):
    """The worst red-team answer explained (app/eval/explain.py) into explain/, linked from report.md."""
    steps: int = Field(8, ge=2)        # integrated gradients' interpolation steps
    max_tokens: int = Field(12, ge=1)  # the answer's first N tokens


class RagEvalSection(Config):
    """task: rag (app/rag/evaluate.py): questions answered with and without the index's sources."""
    index: str                              # a jobs.index output
    questions: str = "data/demo/raw/kb_questions.jsonl"  # {id, question, answer, doc}
    k: int = Field(4, ge=1)
    mode: Literal["bm25", "dense", "hybrid"] = "bm25"


class EvalConfig(JobConfig):
    model: str = "smollm2-135m-instruct"
    data: str = "runs/pipeline-demo/data/test"  # Parquet SFT records (the last assistant turn is the reference),
    task: Literal["chat", "gsm8k", "rag"] = "chat"  # gsm8k: GSM8K JSONL {question, answer}, adds final-answer
    # accuracy; rag: the `rag` section's questions with vs without retrieval (no registry, no gate)
    max_samples: int | None = 64
    batch_size: int = 8
    max_new_tokens: int = 96
    max_len: int = 1024
    concurrency: int = 1  # model actors
    dtype: Literal["float32", "auto"] = "float32"  # auto: bf16 body where the machine is fast at it (app/precision.py)
    engine: Literal["auto", "hf", "vllm"] = "auto"  # the answers' engine; auto: vLLM where it is installed and runs
    vllm: VLLMSection = VLLMSection(kv_cache_mb=256)  # the model (app/vllm_engine.choose)
    safety: SafetySection | None = SafetySection()  # the red-team pass (app/eval/safety.py); null: none
    human_eval_rows: int = 20
    efficiency: bool = True
    registry: str = Field(default_factory=default_path)  # RAYPOST_REGISTRY or runs/registry.sqlite
    heldout: HeldoutPrompts | None = None
    identity: IdentityProbe | None = None
    bias: BiasProbe | None = None  # paired prompts differing only in the asker's gender, age or region
    judge: JudgeConfig | None = None  # win_rate against the baseline's answers (app/eval/judge.py)
    explain: ExplainSection | None = None  # explain the worst safety case (needs safety: true)
    rag: RagEvalSection | None = None      # task: rag
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _rag_section(self):
        if (self.task == "rag") != (self.rag is not None):
            raise ValueError("task: rag and the rag section (index, questions) go together")
        return self


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
    """jobs.export: the ONNX graph (app/onnx_export.py), then greedy equality with PyTorch on the eval
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
