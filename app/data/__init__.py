"""The data stage: raw records -> normalized, filtered, PII-safe, deduplicated, split training data."""
