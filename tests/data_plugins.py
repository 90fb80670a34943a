"""A user-style quality-model plugin for the data stage's `filters.quality_model` hook."""


def politeness(replies: list[str]) -> list[float]:
    """1.0 for replies that thank or apologise, else 0.0."""
    return [1.0 if any(w in r.lower() for w in ("thank", "sorry", "感谢", "抱歉")) else 0.0 for r in replies]
