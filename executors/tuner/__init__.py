"""Jina-free tuning core: losses, miners, samplers, training loop, callbacks, tailor."""
