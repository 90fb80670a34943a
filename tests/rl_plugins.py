"""Reward functions for PPO tests (loaded by `reward_function: tests.rl_plugins:<name>`)."""


def newline_share(prompts, responses):
    """Share of line breaks in the response."""
    return [r.count("\n") / max(1, len(r)) for r in responses]


def text_length(prompts, responses):
    """Characters of the response / 100: varies from sample to sample even on the tiny model."""
    return [len(r) / 100 for r in responses]


def fourth_is_toxic(texts):
    """A toxicity scorer (SafetySection.scorer): 0.9 for the fourth text, 0 for the rest."""
    return [0.9 if i == 3 else 0.0 for i in range(len(texts))]


def odd_length_is_toxic(texts):
    """A toxicity scorer that calls about half of the tiny policy's samples toxic: those of odd length."""
    return [float(len(t) % 2) for t in texts]
