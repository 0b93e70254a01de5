"""Jina-free tuning core: losses, miners, samplers, training loop, callbacks, tailor."""


def __getattr__(name):
    """Old Finetuner module names (``executors.tuner.pytorch``, ``executors.tuner.callback``)."""
    from executors.legacy import alias_attribute

    return alias_attribute(__name__, name)
