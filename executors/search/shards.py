"""Merging the answers of index shards (Jina-free).

With ``shards: N`` and ``polling: ALL`` every shard answers every query from the documents it
holds (:func:`shard_of`); :func:`merge_top_k` turns the ``N`` answers of one query into the answer
one index holding everything gives: the ``limit`` best by score (descending; equal scores keep
shard order), with their fields.
"""
import zlib
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that owns ``doc_id``: ``crc32(utf-8 id) mod shards`` (stable across processes)."""
    return zlib.crc32(doc_id.encode()) % shards


def merge_top_k(answers: Sequence[Tuple[List[str], np.ndarray, Dict[str, List[Any]]]], limit: int
                ) -> Tuple[List[str], np.ndarray, Dict[str, List[Any]]]:
    """``answers``: per shard ``(ids [n_s], scores [n_s], {field: [n_s values]})`` of one query;
    returns the merged ``(ids [k], scores [k], fields)`` with ``k = min(limit, sum n_s)``."""
    ids = [i for shard_ids, _, _ in answers for i in shard_ids]
    scores = np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1) for _, s, _ in answers]) if answers \
        else np.zeros(0, np.float32)
    names = list(answers[0][2]) if answers else []
    order = np.argsort(-scores, kind='stable')[:int(limit)]
    fields = {name: [v for _, _, f in answers for v in f.get(name, [])] for name in names}
    return [ids[i] for i in order], scores[order], {name: [values[i] for i in order] for name, values in fields.items()}
