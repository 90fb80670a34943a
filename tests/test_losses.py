"""PPO and reward-model math against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from app.train.losses import (KLController, entropy, gae, gather_logprobs, masked_mean, pairwise_loss, policy_loss,
                           token_rewards, value_loss, whiten)

T = torch.tensor


def close(x: torch.Tensor, expected) -> bool:
    return torch.allclose(x.float(), torch.tensor(expected, dtype=torch.float32), atol=1e-4)


def test_pairwise_loss():
    # -log sigmoid(2 - 0) = log(1 + e^-2); with margin 1: log(1 + e^-1)
    assert float(pairwise_loss(T([2.0]), T([0.0]))) == pytest.approx(math.log(1 + math.exp(-2)))
    assert float(pairwise_loss(T([2.0]), T([0.0]), 1.0)) == pytest.approx(math.log(1 + math.exp(-1)))
    assert float(pairwise_loss(T([0.0, 0.0]), T([0.0, 0.0]))) == pytest.approx(math.log(2))


def test_token_rewards_kl_on_every_token_score_on_the_last():
    logp, ref = T([[-1.0, -2.0, -0.5, 0.0]]), T([[-1.5, -2.0, -1.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])  # 3 response tokens, then padding
    rewards, kl = token_rewards(T([2.0]), logp, ref, mask, kl_coef=0.1)
    assert close(kl, [[0.5, 0.0, 0.5, 0.0]])
    assert close(rewards, [[-0.05, 0.0, -0.05 + 2.0, 0.0]])


def test_gae_by_hand():
    # r = [0, 1], V = [0.5, 0.2], gamma 0.9, lambda 0.8:
    # d1 = 1 + 0 - 0.2 = 0.8 -> A1 = 0.8
    # d0 = 0 + 0.9 * 0.2 - 0.5 = -0.32 -> A0 = -0.32 + 0.9 * 0.8 * 0.8 = 0.256
    adv, ret = gae(T([[0.0, 1.0]]), T([[0.5, 0.2]]), T([[1.0, 1.0]]), gamma=0.9, lam=0.8)
    assert close(adv, [[0.256, 0.8]])
    assert close(ret, [[0.756, 1.0]])
    # padding after the response contributes nothing
    adv_p, _ = gae(T([[0.0, 1.0, 5.0]]), T([[0.5, 0.2, 9.0]]), T([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.8)
    assert close(adv_p, [[0.256, 0.8, 0.0]])


def test_policy_loss_clips_and_counts():
    # ratios e^{0.5} = 1.6487 (A = +1: clipped to 1.2) and e^{-0.5} = 0.6065 (A = -1: clipped to 0.8)
    logp, old = T([[0.5, -0.5]]), T([[0.0, 0.0]])
    loss, clip_frac = policy_loss(logp, old, T([[1.0, -1.0]]), T([[1.0, 1.0]]), clip=0.2)
    # min(1.6487, 1.2) = 1.2 -> -1.2 ; min(-0.6065, -0.8) = -0.8 -> +0.8 ; mean = -0.2
    assert float(loss) == pytest.approx(-0.2, abs=1e-5) and float(clip_frac) == pytest.approx(1.0)
    loss, clip_frac = policy_loss(T([[0.1]]), T([[0.0]]), T([[2.0]]), T([[1.0]]))
    assert float(loss) == pytest.approx(-2 * math.exp(0.1)) and float(clip_frac) == 0.0


def test_tis_weights_truncate_the_rollout_ratio():
    from app.train.losses import tis_weights
    old, mask = T([[-1.0, -2.0, -0.5, -3.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    weights, capped = tis_weights(old, old.clone(), mask, cap=2.0)  # same weights sampled: ratio 1
    assert torch.equal(weights, mask) and float(capped) == 0.0
    rollout = T([[-1.5, -1.0, -2.0, -3.0]])  # ratios e^0.5 = 1.65, e^-1 = 0.37, e^1.5 = 4.48 (capped), padding
    weights, capped = tis_weights(old, rollout, mask, cap=2.0)
    assert close(weights, [[math.exp(0.5), math.exp(-1.0), 2.0, 0.0]]) and float(capped) == pytest.approx(1 / 3)
    # the weights multiply each token's surrogate term and carry no gradient
    logp = T([[-1.0, -2.0, -0.5, -3.0]]).requires_grad_()
    loss, _ = policy_loss(logp, old, T([[1.0, 1.0, 1.0, 1.0]]), mask, weights=weights)
    assert float(loss) == pytest.approx(-(math.exp(0.5) + math.exp(-1.0) + 2.0) / 3, abs=1e-5)


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    # v = 1.0, old = 0.0 -> clipped 0.2; R = 1.0: max((0)^2, (0.8)^2) = 0.64 (the caller applies value_coef)
    assert float(value_loss(T([[1.0]]), T([[0.0]]), T([[1.0]]), T([[1.0]]))) == pytest.approx(0.64)
    # v = 0.1 (inside the clip), R = 0.5: 0.16
    assert float(value_loss(T([[0.1]]), T([[0.0]]), T([[0.5]]), T([[1.0]]))) == pytest.approx(0.16)


def test_whiten_entropy_logprobs():
    x, mask = T([[1.0, 3.0, 100.0]]), T([[1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert close(w, [[-1.0, 1.0, 0.0]])
    assert float(masked_mean(x, mask)) == 2.0
    uniform = torch.zeros(1, 1, 4)
    assert float(entropy(uniform, T([[1.0]]))) == pytest.approx(math.log(4))
    logits = T([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert close(gather_logprobs(logits, torch.tensor([[1]])), [[math.log(0.75)]])


def test_kl_controller():
    fixed = KLController(0.1)
    assert fixed.update(50.0, 256) == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=1000)
    # kl 12 -> error clipped to 0.2 -> 0.1 * (1 + 0.2 * 100 / 1000) = 0.102
    assert adaptive.update(12.0, 100) == pytest.approx(0.102)
    # kl 3 -> error -0.5 clipped to -0.2 -> 0.102 * 0.98
    assert adaptive.update(3.0, 100) == pytest.approx(0.102 * 0.98)
    restored = KLController()
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value and restored.target == 6.0


def test_group_advantages_by_hand():
    from app.train.losses import group_advantages
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2: all equal -> no signal, 0
    adv = group_advantages(T([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    s = 0.5 / math.sqrt(1 / 3)
    assert close(adv, [s, -s, -s, s, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(RuntimeError):
        group_advantages(T([1.0, 2.0, 3.0]), 2)  # not whole groups


def test_kl_k3_by_hand():
    from app.train.losses import kl_k3
    # d = ref - logp = -1 -> e^-1 + 1 - 1 = 0.3679; d = 0.5 -> e^0.5 - 1.5 = 0.1487; masked third ignored
    value = kl_k3(T([[-1.0, -2.0, -9.0]]), T([[-2.0, -1.5, 0.0]]), T([[1.0, 1.0, 0.0]]))
    assert float(value) == pytest.approx((math.exp(-1) + math.exp(0.5) - 1.5) / 2, rel=1e-5)
    assert float(kl_k3(T([[-1.0]]), T([[-1.0]]), T([[1.0]]))) == 0.0


def test_dpo_losses_by_hand():
    from app.train.losses import dpo_loss
    # chosen log-ratio 1 - 0 = 1, rejected -1 - 0 = -1: margin 2
    loss, rc, rr = dpo_loss(T([1.0]), T([-1.0]), T([0.0]), T([0.0]), beta=0.5)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1.0)))  # -log sigmoid(0.5 * 2)
    assert float(rc) == 0.5 and float(rr) == -0.5
    ipo, _, _ = dpo_loss(T([1.0]), T([-1.0]), T([0.0]), T([0.0]), beta=0.5, variant="ipo")
    assert float(ipo) == pytest.approx((2 - 1 / (2 * 0.5)) ** 2)  # (margin - 1/(2 beta))^2 = 1
    with pytest.raises(ValueError, match="hinge"):
        dpo_loss(T([1.0]), T([-1.0]), T([0.0]), T([0.0]), variant="hinge")


def test_sequence_kl_k1_can_go_negative_k3_cannot():
    from app.train.losses import sequence_kl
    logp, ref, mask = T([[-2.0, -1.0, -5.0]]), T([[-1.0, -1.5, 0.0]]), T([[1.0, 1.0, 0.0]])
    k1, k3 = sequence_kl(logp, ref, mask)
    assert k1 == pytest.approx(-0.5)  # (-2 + 1) + (-1 + 1.5); the masked token does not count
    assert k3 == pytest.approx((math.exp(1) - 2) + (math.exp(-0.5) - 0.5))
