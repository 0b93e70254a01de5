"""Variants of ``flows/search.yml`` for other vector sizes, index types and shard counts.

``search_flow_yaml(out_dir, dim=384, shards=2, index_factory='HNSW32')`` writes a copy of the
search flow whose Preprocessor decodes ``dim``-sized vectors, whose Encoder serves ``model_name``
from ``store_dir`` and whose Indexer uses the given FAISS settings, sharded with ``polling`` ALL for every endpoint (``/index`` included)
and the :class:`~executors.shard_merger.ShardMerger` after the shards when ``shards > 1``.
"""
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
# Jina's head sends /index to ONE shard (round robin) unless told otherwise, even with polling ALL; each
# shard must see every request (it keeps the ids it owns), so every endpoint, /index included, is ALL
SHARD_POLLING = '{"*": "ALL", "/index": "ALL"}'
SHARD_MERGER = 'jtype: ShardMerger\npy_modules: [executors.shard_merger]\nwith: {{shards: {shards}}}\n'


def search_flow_config(dim: int = 3, model_name: str = 'swiss-roll-mlp', store_dir: str = 'workspace/models',
                       shards: int = 1, indexer: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The search flow's config as a dict (see module docstring)."""
    config = yaml.safe_load((REPO / 'flows' / 'search.yml').read_text())
    by_name = {e['name']: e for e in config['executors']}
    by_name['preprocessor']['uses_with']['decoding'] = {'modality': 'vector', 'dim': int(dim)}
    by_name['encoder']['uses_with'].update(store_dir=store_dir, model_name=model_name)
    index = by_name['indexer']
    if isinstance(index.get('uses_with', {}).get('follow_store'), dict):  # follow the same model
        index['uses_with']['follow_store'] = {**index['uses_with']['follow_store'], 'store_dir': store_dir,
                                              'model_name': model_name}
    index.setdefault('uses_with', {}).update(indexer or {})
    if shards > 1:
        index.update(shards=int(shards), polling=SHARD_POLLING, uses_after=SHARD_MERGER.format(shards=int(shards)))
    return config


def search_flow_yaml(out_dir, name: str = 'search', **kwargs) -> Path:
    """Write :func:`search_flow_config` to ``out_dir/<name>.yml``; returns the path."""
    path = Path(out_dir) / f'{name}.yml'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(search_flow_config(**kwargs), sort_keys=False))
    return path
