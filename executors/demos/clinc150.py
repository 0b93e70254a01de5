"""CLINC150 intent queries (CC BY 3.0), shipped in ``executors/demos/data/clinc150/``.

``load_clinc150(split)`` -> ``(texts, intents)``, two lists of strings of equal length, in file
order. Splits: ``train`` (15,000), ``val`` (3,000), ``test`` (4,500) over 150 intents;
``oos_train``/``oos_val``/``oos_test`` hold out-of-scope queries (intent ``oos``).
"""
import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from executors.errors import InputError

DATA_FILE = Path(__file__).resolve().parent / 'data' / 'clinc150' / 'data_full.json.gz'
SPLITS = ('train', 'val', 'test', 'oos_train', 'oos_val', 'oos_test')


@lru_cache(maxsize=1)
def _read() -> Dict[str, list]:
    with gzip.open(DATA_FILE, 'rt', encoding='utf-8') as file:
        return json.load(file)


def load_clinc150(split: str, intents: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """``(texts, intents)`` of ``split``; ``intents`` keeps only the items of those intents."""
    if split not in SPLITS:
        raise InputError(f'split: unknown CLINC150 split {split!r}; use one of {", ".join(SPLITS)}')
    rows = _read()[split]
    if intents is not None:
        wanted = set(intents)
        rows = [row for row in rows if row[1] in wanted]
    return [text for text, _ in rows], [intent for _, intent in rows]


def clinc150_intents() -> List[str]:
    """The 150 in-scope intents, sorted."""
    return sorted({intent for _, intent in _read()['train']})
