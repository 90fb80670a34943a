"""Structured pruning of a decoder-only model (seed 002: pruning shrinks a model; distillation lets it keep
the big one's quality): whole decoder layers and MLP channels go, chosen by importance measured on
calibration data. jobs.compress runs it, then distills the pruned model from the unpruned one.

    python -m jobs.compress jobs/configs/compress_demo.yaml

Layer importance is ShortGPT's Block Influence (Men et al. 2024): 1 - the cosine similarity of a layer's
input and output hidden states, averaged over calibration tokens; the layers that change their input least
are dropped. MLP channel importance is the mean absolute activation entering `down_proj` times the norm of
that channel's `down_proj` column (the size of what the channel adds to the residual stream, as in
Wanda's |W|·||x||); each remaining layer keeps the same number of channels, its most important ones, so the
result is an ordinary model of its architecture (num_hidden_layers, intermediate_size) that
`from_pretrained` loads. Llama-style models (model.layers[i].mlp.{gate,up,down}_proj).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def importance(model, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Block Influence per layer [L], channel importance per layer [L, intermediate]) over `batches` of
    {input_ids, attention_mask}; padding is not counted."""
    layers = model.model.layers
    acts = torch.zeros(len(layers), layers[0].mlp.down_proj.in_features, dtype=torch.float64)
    influence, tokens = torch.zeros(len(layers), dtype=torch.float64), 0
    mask_now = {}

    def hook(i):
        def record(module, args):
            x = args[0].abs()[mask_now["m"]]
            acts[i] += x.double().sum(0)
        return record
    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            mask = batch["attention_mask"].bool()
            mask_now["m"] = mask
            hidden = model(**batch, output_hidden_states=True).hidden_states
            for i in range(len(layers)):
                cos = torch.nn.functional.cosine_similarity(hidden[i][mask].double(), hidden[i + 1][mask].double(), -1)
                influence[i] += (1 - cos).sum()
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    norms = torch.stack([layer.mlp.down_proj.weight.double().norm(dim=0) for layer in layers])
    return influence / tokens, acts / tokens * norms


def _sliced(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    weight = linear.weight.index_select(dim, index)
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                          dtype=weight.dtype, device=weight.device)
    out.weight.data.copy_(weight)
    if linear.bias is not None:
        out.bias.data.copy_(linear.bias if dim == 1 else linear.bias.index_select(0, index))
    return out


@torch.no_grad()
def prune(model, drop_layers: int, mlp_keep: float, influence: torch.Tensor, channels: torch.Tensor) -> dict:
    """Drop the `drop_layers` layers of least influence and keep the `mlp_keep` share of each remaining
    layer's MLP channels (its most important ones), in place; returns what was removed."""
    layers = model.model.layers
    dropped = sorted(torch.argsort(influence)[:drop_layers].tolist())
    kept = [i for i in range(len(layers)) if i not in dropped]
    width = max(1, round(channels.shape[1] * mlp_keep))
    for i in kept:
        mlp = layers[i].mlp
        index = torch.sort(torch.topk(channels[i], width).indices).values
        mlp.gate_proj, mlp.up_proj = _sliced(mlp.gate_proj, index, 0), _sliced(mlp.up_proj, index, 0)
        mlp.down_proj = _sliced(mlp.down_proj, index, 1)
    model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new, layer in enumerate(model.model.layers):  # the KV cache is indexed by layer
        layer.self_attn.layer_idx = new
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers, config.intermediate_size = len(kept), width
    return {"dropped_layers": dropped, "layer_influence": [round(float(x), 6) for x in influence],
            "intermediate_size": width}
