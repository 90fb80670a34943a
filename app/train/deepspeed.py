"""DeepSpeed for the trainers: the one place its config dicts are built (from flat arguments), and its import."""
from __future__ import annotations


def import_deepspeed():
    """deepspeed, its CPU shared-memory all-reduce op marked unavailable. Only DeepSpeed's inference
    tensor-parallel path calls that op (TorchBackend.inference_all_reduce); training all-reduces through
    torch.distributed. Without this, every CPU process that starts DeepSpeed's comm back end loads the op,
    and the first one on a machine JIT-compiles it (~50 s of g++ on 2 cores) for nothing."""
    import deepspeed
    import deepspeed.ops
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def build_ds_config(micro_batch_size: int, grad_accum: int, grad_clip: float, zero_stage: int,
                    precision: str = "fp32", offload: bool = False, lr: float = 1e-4,
                    betas: tuple = (0.9, 0.999), weight_decay: float = 0.0) -> dict:
    """A DeepSpeed config, ZeRO 0-3. Without offload we pass our own torch AdamW (a client optimizer);
    with offload DeepSpeed builds its CPU Adam from the "optimizer" section (lr etc. used only then).

    fp16 uses dynamic loss scaling; bf16 needs no scaler. Offload moves optimizer state (and at stage 3
    the parameters) to CPU memory."""
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, "overlap_comm": False,
                              "stage3_gather_16bit_weights_on_model_save": zero_stage == 3},
        "zero_allow_untested_optimizer": True,  # torch AdamW as the client optimizer
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    elif precision == "bf16":
        config["bf16"] = {"enabled": True}
    if offload and zero_stage >= 1:
        config["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "betas": list(betas),
                                                           "weight_decay": weight_decay}}
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero_stage == 3:
            config["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": True}
    return config
