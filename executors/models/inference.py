"""From documents to model batches to embeddings (used by training, serving and evaluation).

* :func:`doc_content`: a doc's content for the model (``tensor``, else ``text``, else ``uri``);
* :func:`default_collate`: a list of inputs -> one batch (tensor ``[B, ...]``, list of
  strings, or dict of tensors);
* :func:`to_device`: move a batch (tensor, mapping or list of tensors) to a device;
* :func:`embed`: embeddings ``[N, D]`` of docs or inputs with any ``torch.nn.Module``, through
  the model's input transform (:mod:`executors.data.transforms`) when it carries one.
"""
from collections.abc import Mapping
from typing import Any, Callable, List, Optional

import numpy as np
import torch
from torch import nn

from executors.data.transforms import transform_of
from executors.errors import InputError


def doc_content(doc) -> Any:
    """A doc's content for the model: ``tensor`` (the decoded value) if set, else ``text``, else ``uri``."""
    for field in ('tensor', 'text', 'uri'):
        value = getattr(doc, field, None)
        if value is not None:
            return np.asarray(value) if field == 'tensor' else value
    raise InputError(f'docs[{getattr(doc, "id", "?")}]: has no tensor, text or uri to embed; set one of them')


def default_collate(inputs: List[Any]):
    """Stack arrays/tensors into one tensor ``[B, ...]`` (float32 for floating inputs); strings
    stay a list; dicts are collated per key."""
    first = inputs[0]
    if isinstance(first, str):
        return list(inputs)
    if isinstance(first, dict):
        return {k: default_collate([x[k] for x in inputs]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.stack(inputs)
    arrays = [np.asarray(x) for x in inputs]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f'tensor: items have different shapes {sorted(shapes)[:3]}; preprocess them to one shape')
    batch = torch.from_numpy(np.stack(arrays))
    return batch.float() if batch.is_floating_point() else batch


def to_device(batch, device):
    """``batch`` on ``device``: tensors move, as do the values of any ``Mapping`` (a dict, or a
    transformers ``BatchEncoding``, which keeps its type) and the items of lists/tuples; anything else
    (texts) stays."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        moved = {k: to_device(v, device) for k, v in batch.items()}
        if type(batch) is dict:
            return moved
        try:  # keep the user's mapping type (attribute access such as encoding.input_ids keeps working)
            return type(batch)(moved)
        except Exception:  # noqa: BLE001 - a mapping type that cannot be built from a dict
            return moved
    if isinstance(batch, (list, tuple)) and any(isinstance(x, (torch.Tensor, Mapping)) for x in batch):
        moved = [to_device(x, device) for x in batch]
        return type(batch)(*moved) if hasattr(batch, '_fields') else type(batch)(moved)
    return batch


@torch.no_grad()
def embed(docs, model: nn.Module, batch_size: int = 256, device: str = 'cpu',
          preprocess_fn: Optional[Callable] = None, collate_fn: Optional[Callable] = None) -> np.ndarray:
    """Embeddings ``[N, D]`` (float32) of ``docs`` (docs with tensor/text/uri, or a list/array of
    inputs), in eval mode; for docs, each ``doc.embedding`` is set as well.

    Batches are ``collate_fn([preprocess_fn(x) ...])``; when neither is given and the model carries
    an input transform, ``transform.batch(values)`` (no augmentation), else ``default_collate``.
    Texts (more than one batch of them) are batched longest first, to pad less."""
    if isinstance(batch_size, str):  # the old Finetuner's embed(docs, model, device, batch_size)
        raise InputError(f'batch_size: got {batch_size!r}; the third argument of embed is batch_size (the old '
                         f'Finetuner had device there): write embed(docs, model, device={batch_size!r})')
    items = list(docs)
    if not items:
        return np.zeros((0, 0), dtype=np.float32)
    is_docs = hasattr(items[0], 'embedding')
    contents = [doc_content(d) for d in items] if is_docs else items
    transform = transform_of(model) if preprocess_fn is None and collate_fn is None else None
    # texts are batched longest first (less padding per batch) and returned in input order
    order = None
    if len(contents) > batch_size and all(isinstance(c, str) for c in contents):
        order = np.argsort([-len(c) for c in contents], kind='stable')
        contents = [contents[i] for i in order]
    was_training = model.training
    model.eval()
    model.to(device)
    out = []
    try:
        for start in range(0, len(contents), batch_size):
            chunk = contents[start:start + batch_size]
            if preprocess_fn is not None:
                chunk = [preprocess_fn(c) for c in chunk]
            batch = transform.batch(chunk) if transform is not None else (collate_fn or default_collate)(chunk)
            result = model(to_device(batch, device))
            if result.ndim != 2:
                raise InputError(f'model: must return embeddings of shape [B, D], returned {tuple(result.shape)}; '
                                 'cut it with to_embedding_model')
            out.append(result.float().cpu().numpy())
    finally:
        model.train(was_training)
    embeddings = np.concatenate(out)
    if order is not None:
        unsorted = np.empty_like(embeddings)
        unsorted[order] = embeddings
        embeddings = unsorted
    if is_docs:
        for doc, vector in zip(items, embeddings):
            doc.embedding = vector
    return embeddings
