"""The embedded demo corpus: a seeded generator of a fictional shop's customer-service export."""
