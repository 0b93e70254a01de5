"""The search flow's serving state: which model version its index serves and which one a swap
is building, persisted by the Indexer in ``<index_dir>/state.json`` and followed by every
Encoder replica, so a restarted flow serves the version it served before, whatever the
model store's pointers say.
"""
import json
from pathlib import Path
from typing import Optional, Tuple

STATE_FILE = 'state.json'


def read_serving_state(index_dir) -> Tuple[Optional[int], Optional[int]]:
    """``(active version, pending version)`` from the index's state file; ``(None, None)`` when
    the index has never been written (a new search flow)."""
    path = Path(index_dir) / STATE_FILE
    if not path.is_file() and (Path(index_dir) / 'shard-0' / STATE_FILE).is_file():  # a sharded Indexer
        path = Path(index_dir) / 'shard-0' / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None, None
    return state.get('active_version'), state.get('pending_version')
