"""The search flow's serving state: which model version its index serves and which one a swap
is building, persisted by the Indexer in ``<index_dir>/state.json`` and followed by every
Encoder replica, so a restarted flow serves the version it served before, whatever the
model store's pointers say.

A sharded Indexer keeps one state per shard (``<index_dir>/shard-<i>/state.json``); shards switch
one after the other, so while some have activated version ``n`` and others still serve ``o`` (with
``n`` pending), the flow's state is ``(o, n)``: queries stay on ``o`` (every shard answers it, the
switched ones from their retiring generation) and new documents get both embeddings, until every
shard serves ``n``.
"""
import json
from pathlib import Path
from typing import List, Optional, Tuple

STATE_FILE = 'state.json'


def _read(path: Path) -> Tuple[Optional[int], Optional[int]]:
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None, None
    return state.get('active_version'), state.get('pending_version')


def shard_states(index_dir) -> List[Tuple[Optional[int], Optional[int]]]:
    """``[(active, pending)]`` of the index (one entry) or of each shard, in shard order."""
    index_dir = Path(index_dir)
    shards = sorted(index_dir.glob(f'shard-*/{STATE_FILE}'), key=lambda p: int(p.parent.name.split('-')[1]))
    if shards and not (index_dir / STATE_FILE).is_file():
        return [_read(path) for path in shards]
    return [_read(index_dir / STATE_FILE)]


def read_serving_state(index_dir) -> Tuple[Optional[int], Optional[int]]:
    """``(active version, pending version)`` of the flow; ``(None, None)`` when the index has
    never been written (a new search flow). Sharded: see the module docstring."""
    states = [s for s in shard_states(index_dir) if s != (None, None)]
    if not states:
        return None, None
    actives = {active for active, _ in states}
    pendings = [pending for _, pending in states if pending is not None]
    if len(actives) == 1:
        return actives.pop(), (pendings[0] if pendings else None)
    # mid-switch: the shards that still serve the old version hold the new one pending
    waiting = [(active, pending) for active, pending in states if pending is not None]
    if waiting:
        return waiting[0]
    return states[0]
