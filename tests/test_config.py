import pytest

from app.config import Config, ConfigError, JobConfig, load_config


class OptimConfig(Config):
    lr: float = 3e-4
    warmup: int = 10


class LoraConfig(Config):
    r: int = 16
    target_modules: list[str] = ["q_proj", "v_proj"]


class TrainConfig(JobConfig):
    model: str = "tiny"
    optim: OptimConfig = OptimConfig()
    lora: LoraConfig | None = None
    use_gpu: bool = False


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "# python -m jobs.x c.yaml\nname: run1\noptim:\n  lr: 0.001\n")
    cfg = load_config(TrainConfig, path, ["optim.warmup=5", "use_gpu=true", "lora.target_modules=[q_proj]",
                                          "optim.lr=1e-4"])
    assert cfg.name == "run1"
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.optim.warmup == 5
    assert cfg.use_gpu is True
    assert cfg.lora.target_modules == ["q_proj"] and cfg.lora.r == 16
    assert str(cfg.out("sft")) == "runs/sft-run1"
    assert str(load_config(TrainConfig, path, ["output_dir=/tmp/x"]).out("sft")) == "/tmp/x"


def test_override_values_stay_strings_for_string_fields():
    cfg = load_config(TrainConfig, None, ["model=yes", "name=a: b"])
    assert cfg.model == "yes" and cfg.name == "a: b"


def test_unknown_nested_key_names_key_and_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, ["optim.lrr=1"])
    assert "optim.lrr" in str(err.value) and "lr, warmup" in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'modle'.*allowed: name, output_dir, seed, model"):
        load_config(TrainConfig, write(tmp_path, "modle: tiny\n"))


def test_mistyped_value_names_key():
    with pytest.raises(ConfigError, match="config key 'optim.warmup'.*'ten'"):
        load_config(TrainConfig, None, ["optim.warmup=ten"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"bad YAML in .*c.yaml at line \d+"):
        load_config(TrainConfig, write(tmp_path, "name: a\noptim: [1\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(TrainConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="c.yaml at line 4.*duplicate key 'lr'"):
        load_config(TrainConfig, write(tmp_path, "name: a\noptim:\n  lr: 1\n  lr: 2\n"))


def test_bad_override_shapes(tmp_path):
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(TrainConfig, None, ["optim"])
    with pytest.raises(ConfigError, match="model is a value, not a section"):
        load_config(TrainConfig, write(tmp_path, "model: tiny\n"), ["model.x=1"])
    with pytest.raises(ConfigError, match="config key 'model': Input should be a valid string"):
        load_config(TrainConfig, None, ["model.x=1"])


def test_every_shipped_yaml_starts_with_its_command():
    from app.cli import CONFIG_DIR
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert files
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# python -m jobs.") or first.startswith("# serve "), path


def test_sft_numeric_choice_from_command_line():
    from app.train.config import SFTConfig
    assert load_config(SFTConfig, None, ["scaling.zero_stage=3"]).scaling.zero_stage == 3
    with pytest.raises(ConfigError, match="scaling.zero_stage"):
        load_config(SFTConfig, None, ["scaling.zero_stage=4"])


@pytest.mark.parametrize("overrides, stage", [
    ([], 0), (["method=full"], 2), (["method=full", "scaling.num_workers=1"], 0),
    (["scaling.offload=true"], 2), (["method=ia3"], 0), (["scaling.zero_stage=1"], 1)])
def test_zero_stage_auto_takes_stage_0_for_adapters_and_one_worker(overrides, stage):
    """Resolved when the config loads, so the run's recorded config says which stage ran."""
    from app.train.config import DPOConfig, RewardConfig, SFTConfig
    assert load_config(SFTConfig, None, overrides).scaling.zero_stage == stage
    assert load_config(RewardConfig, None, []).scaling.zero_stage == 2  # full fine-tuning on 2 workers
    assert load_config(DPOConfig, None, ["method=lora"]).scaling.zero_stage == 0
