"""The toy world: a seeded synthetic knowledge base, a tiny LM that knows it, and its datasets."""
