"""Reward functions for PPO tests (loaded by `reward_function: tests.rl_plugins:<name>`)."""


def newline_share(prompts, responses):
    """Share of line breaks in the response."""
    return [r.count("\n") / max(1, len(r)) for r in responses]


def text_length(prompts, responses):
    """Characters of the response / 100: varies from sample to sample even on the tiny model."""
    return [len(r) / 100 for r in responses]
