"""Heads over embeddings, and a frozen base model plus a head as one model.

* ``build_model({'builder': 'head', 'kwargs': {'kind', 'in_dim', 'out_dim'}})``: ``[B, in_dim] ->
  [B, out_dim]``, ``kind='linear'``: ``W x``; ``kind='feedforward'``: ``tanh(W x + b)`` (the heads
  :mod:`executors.tuner.head_tuners` learn).
* ``build_model({'builder': 'with_head', 'kwargs': {'base': spec, 'head': {kind, in_dim, out_dim}}})``:
  ``head(base(x))``, the base frozen (``requires_grad=False``). Stored as one model version
  (safetensors + JSON), e.g. MiniLM plus a tuned head: :func:`with_head`.
"""
from typing import Any, Dict

import torch
from torch import nn

from executors.errors import InputError, positive_int
from executors.models.registry import register_builder

HEAD_KINDS = ('linear', 'feedforward')


class Head(nn.Module):
    """``W x`` (linear) or ``tanh(W x + b)`` (feedforward)."""

    def __init__(self, kind: str, in_dim: int, out_dim: int):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise InputError(f'head.kind: unknown {kind!r}; use one of {", ".join(HEAD_KINDS)}')
        self.kind = kind
        self.layer = nn.Linear(positive_int('head.in_dim', in_dim), positive_int('head.out_dim', out_dim),
                               bias=kind == 'feedforward')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        return torch.tanh(out) if self.kind == 'feedforward' else out


@register_builder('head')
def build_head(kind: str, in_dim: int, out_dim: int) -> Head:
    return Head(kind, in_dim, out_dim)


class WithHead(nn.Module):
    """``head(base(x))`` with a frozen base."""

    def __init__(self, base: nn.Module, head: nn.Module):
        super().__init__()
        self.base, self.head = base, head
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)

    def forward(self, batch):
        return self.head(self.base(batch))


@register_builder('with_head')
def build_with_head(base: Dict[str, Any], head: Dict[str, Any]) -> WithHead:
    from executors.models.builders import build_model

    if not isinstance(head, dict):
        raise InputError(f'head: expected {{"kind": ..., "in_dim": ..., "out_dim": ...}}, got {head!r}')
    return WithHead(build_model(base), build_model({'builder': 'head', 'kwargs': head}))


def with_head(base: nn.Module, head: nn.Module) -> WithHead:
    """One model of a base built by ``build_model`` and a head from ``tuner.head_module()``; its spec
    rebuilds both, its state dict holds both (so a published version needs nothing else)."""
    from executors.models.builders import model_spec

    head_spec = model_spec(head)
    if head_spec['builder'] != 'head':
        raise InputError('head: expected a head from FeedForwardTuner/ContrastiveTuner.head_module()')
    model = WithHead(base, head)
    model.builder_spec = {'builder': 'with_head', 'kwargs': {'base': model_spec(base), 'head': head_spec['kwargs']}}
    return model
