"""End-to-end scenarios run through the real flows (``python -m executors.demos.<name>``)."""
