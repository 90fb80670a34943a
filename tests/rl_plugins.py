"""Reward functions for PPO tests (loaded by `reward_function: tests.rl_plugins:<name>`)."""


def newline_share(prompts, responses):
    """Share of line breaks in the response."""
    return [r.count("\n") / max(1, len(r)) for r in responses]
