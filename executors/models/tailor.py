"""Tailor: inspect any torch.nn.Module layer by layer and cut it into an embedding model.

Layers are the model's registered submodules, named by their ``named_modules()`` path ('layer4.1.conv2',
'avgpool', 'fc'). Functional ops inside a forward (``F.relu``, ``torch.flatten``, ``x + y``) are not layers:
they are neither listed nor valid cut points.

Inspection (``describe_layers``, ``display``) runs one dummy batch of shape (batch_size, *input_size) through
the model with forward hooks, in eval mode under ``torch.no_grad()``.

Cutting (``to_embedding_model``) returns an ``EmbeddingModel`` that runs the original forward until the cut
layer has produced its output and then stops: a forward hook on that layer raises the private
``_StopForward`` exception carrying the output, and ``EmbeddingModel.forward`` catches it. This works for any
forward code (not only nn.Sequential), and layers that would run after the cut are never executed. If the cut
layer is called several times in one forward, the first call's output is used.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import sys
import threading
from dataclasses import dataclass
from typing import Any, Sequence, TextIO

import torch
from torch import nn

from executors.errors import InputError

__all__ = ["LayerInfo", "EmbeddingModel", "describe_layers", "display", "to_embedding_model"]


@dataclass(frozen=True)
class LayerInfo:
    """One module that ran during the dummy forward of ``describe_layers``.

    name: ``named_modules()`` path; module_type: class name (e.g. 'Conv2d');
    output_shape: output shape without the batch dim, None when the output is not a tensor;
    num_params: number of elements of the module's own parameters (children not counted);
    trainable: True when all own parameters require grad, None when the module has no own parameters.
    """

    name: str
    module_type: str
    output_shape: tuple[int, ...] | None
    num_params: int
    trainable: bool | None


class _StopForward(BaseException):
    """Raised by the cut-layer hook to end a forward early; carries the layer output.

    A BaseException, so that ``except Exception`` blocks inside user forward code do not swallow it.
    ``token`` identifies the ``EmbeddingModel.forward`` call that registered the hook (for nested cuts).
    """

    def __init__(self, token: object, output: Any):
        super().__init__()
        self.token = token
        self.output = output


class EmbeddingModel(nn.Module):
    """``base`` run up to its layer ``layer_name``, flattened, then ``head``.

    forward(*inputs, **kw_inputs) = head(flatten(y)), where y is the output of layer ``layer_name`` during
    ``base(*inputs, **kw_inputs)`` (the full base output when layer_name is None) and
    flatten: (B, d1, ..., dk) -> (B, d1*...*dk), (B,) -> (B, 1). Layers of ``base`` that would run after the
    cut layer are skipped (see the module docstring). ``head`` defaults to nn.Identity.

    Settings (plain attributes, returned by ``settings()`` as JSON-serialisable dict):
        layer_name: cut layer path, or None for the full output;
        feature_dim: D of the flattened (B, D) cut output, None if not measured;
        embedding_dim: output dim of forward, None if not known;
        projection_dim: E when ``head`` is the nn.Linear(D, E) built from an int projection head, else None.
    ``EmbeddingModel.from_settings(base, settings)`` rebuilds the module so that a saved state_dict loads.
    """

    def __init__(
        self,
        base: nn.Module,
        layer_name: str | None = None,
        head: nn.Module | None = None,
        *,
        feature_dim: int | None = None,
        embedding_dim: int | None = None,
        projection_dim: int | None = None,
    ):
        super().__init__()
        if layer_name is not None:
            _check_layer_names(base, [layer_name], "layer_name")
        self.base = base
        self.head = nn.Identity() if head is None else head
        self.layer_name = layer_name
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.projection_dim = projection_dim

    @classmethod
    def from_settings(cls, base: nn.Module, settings: dict, head: nn.Module | None = None) -> EmbeddingModel:
        """Rebuild from ``settings()`` output; the head is nn.Linear(feature_dim, projection_dim) when
        projection_dim is set, else ``head`` (pass the custom head module you used) or nn.Identity."""
        if settings.get("projection_dim") is not None:
            head = nn.Linear(settings["feature_dim"], settings["projection_dim"])
        return cls(base, head=head, **settings)

    def settings(self) -> dict:
        """{layer_name, feature_dim, embedding_dim, projection_dim}: JSON-serialisable, see class docstring."""
        return {
            "layer_name": self.layer_name,
            "feature_dim": self.feature_dim,
            "embedding_dim": self.embedding_dim,
            "projection_dim": self.projection_dim,
        }

    def forward(self, *inputs: Any, **kw_inputs: Any) -> torch.Tensor:
        """(B, ...) inputs -> (B, embedding_dim) embeddings."""
        output = self._cut_output(inputs, kw_inputs)
        if not isinstance(output, torch.Tensor) or output.dim() == 0:
            where = "the full model" if self.layer_name is None else f"layer {self.layer_name!r}"
            raise InputError(
                f"layer_name: {where} outputs {type(output).__name__} "
                f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}, not a (B, ...) tensor; "
                "cut at a layer whose output shape display(model, input_size) shows"
            )
        features = torch.flatten(output, 1) if output.dim() > 1 else output.unsqueeze(1)
        return self.head(features)

    def _cut_output(self, inputs: tuple, kw_inputs: dict) -> Any:
        """Output of layer ``layer_name`` during base(*inputs, **kw_inputs), stopping the forward there."""
        if self.layer_name is None:
            return self.base(*inputs, **kw_inputs)
        token = object()
        thread_id = threading.get_ident()

        def stop_forward(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() == thread_id:  # a concurrent forward in another thread runs through
                raise _StopForward(token, output)

        handle = self.base.get_submodule(self.layer_name).register_forward_hook(stop_forward)
        try:
            self.base(*inputs, **kw_inputs)
        except _StopForward as stopped:
            if stopped.token is not token:  # raised for an enclosing EmbeddingModel
                raise
            return stopped.output
        finally:
            handle.remove()
        raise InputError(
            f"layer_name: layer {self.layer_name!r} was not called by the forward of {type(self.base).__name__}; "
            "cut at a layer listed by display(model, input_size)"
        )

    def extra_repr(self) -> str:
        return f"layer_name={self.layer_name!r}, feature_dim={self.feature_dim}, embedding_dim={self.embedding_dim}"


def describe_layers(
    model: nn.Module, input_size: Sequence[int], input_dtype: str | torch.dtype = "float32", batch_size: int = 2
) -> list[LayerInfo]:
    """The layers of ``model`` that run on a dummy batch of shape (batch_size, *input_size) and dtype input_dtype.

    Lists every submodule of ``named_modules()`` (leaves and containers, not the root model itself) whose
    forward is called, once, at its first call, in the order outputs are produced: a container comes right
    after its children, and a layer is listed after every layer whose output was needed before it. Modules
    never called (or only via ``.forward()``, which skips hooks) are not listed. Float batches are uniform in
    [0, 1), integer ones (input_dtype='int64' for token ids) are zeros. The forward runs in eval mode under
    ``torch.no_grad()`` and training flags are restored; fused inference paths (e.g. the fast path of
    nn.TransformerEncoderLayer) can hide inner layers, so cut at the listed container in that case.
    Raises InputError naming input_size / input_dtype when the batch is invalid or the forward fails.
    """
    layers: list[LayerInfo] = []
    listed: set[str] = set()

    def recorder(name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            if name in listed:
                return
            listed.add(name)
            own_params = list(module.parameters(recurse=False))
            layers.append(
                LayerInfo(
                    name=name,
                    module_type=type(module).__name__,
                    output_shape=tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None,
                    num_params=sum(p.numel() for p in own_params),
                    trainable=all(p.requires_grad for p in own_params) if own_params else None,
                )
            )

        return record

    batch = _dummy_batch(model, input_size, input_dtype, batch_size)
    handles = [module.register_forward_hook(recorder(name)) for name, module in model.named_modules() if name]
    try:
        _checked_forward(model, batch, "input_size/input_dtype", _INPUT_FIX)
    finally:
        for handle in handles:
            handle.remove()
    return layers


def display(
    model: nn.Module, input_size: Sequence[int], input_dtype: str | torch.dtype = "float32", file: TextIO | None = None
) -> list[LayerInfo]:
    """Print ``describe_layers(model, input_size, input_dtype)`` as a table and return it.

    Columns: name, type, output shape (without batch dim, '-' for non-tensor outputs), params (own), trainable
    ('-' without own params); then total and trainable parameter counts of the whole model. Rendered with
    ``rich`` when installed, else as plain text; ``file`` is a text stream (default sys.stdout).
    """
    layers = describe_layers(model, input_size, input_dtype)
    header = ("name", "type", "output shape", "params", "trainable")
    rows = [
        (
            layer.name,
            layer.module_type,
            "-" if layer.output_shape is None else str(layer.output_shape),
            f"{layer.num_params:,}",
            {True: "yes", False: "no", None: "-"}[layer.trainable],
        )
        for layer in layers
    ]
    title = f"{type(model).__name__} on input (B, {', '.join(map(str, input_size))}) {input_dtype}"
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = f"total params: {total:,}, trainable params: {trainable:,}"
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        def line(cells: Sequence[str]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

        lines = [title, line(header), line(["-" * width for width in widths]), *map(line, rows), summary]
        print("\n".join(lines), file=file or sys.stdout)
    else:
        table = Table(title=title, caption=summary)
        for column in header:
            table.add_column(column, justify="right" if column == "params" else "left", no_wrap=True)
        for row in rows:
            table.add_row(*map(Text, row))
        console = Console(file=file)
        if not console.is_terminal:  # a file or pipe: fit the table rather than the 80-column default
            console.width = max(console.width, sum(widths) + 3 * len(header) + 1)
        console.print(table)
    return layers


def to_embedding_model(
    model: nn.Module,
    layer_name: str | None = None,
    freeze: bool | Sequence[str] = False,
    projection_head: int | nn.Module | None = None,
    input_size: Sequence[int] | None = None,
    input_dtype: str | torch.dtype = "float32",
) -> EmbeddingModel:
    """Cut a deep copy of ``model`` at ``layer_name``: x -> flatten(layer output) (B, D) -> projection head.

    layer_name: ``named_modules()`` path of the last layer to run (see ``display``); None: the full output.
    freeze: True freezes (requires_grad=False) every parameter of the copied model; a list of layer names
        freezes the parameters of those modules and their children. The projection head stays trainable.
    projection_head: None; an int E adds a trainable nn.Linear(D, E) (needs input_size to measure D); or an
        nn.Module applied to the (B, D) features, used as is.
    input_size, input_dtype: per-sample input shape and dtype of a dummy batch (as in ``describe_layers``)
        that measures feature_dim D and embedding_dim; without input_size they stay None (unless E is given).
    ``model`` itself is not modified. Raises InputError naming the bad argument.
    """
    if layer_name is not None:
        _check_layer_names(model, [layer_name], "layer_name")
    if not isinstance(freeze, bool):
        if isinstance(freeze, str) or not isinstance(freeze, Sequence):
            raise InputError(
                f"freeze: expected True, False or a list of layer names such as ['conv1'] (got {freeze!r})"
            )
        _check_layer_names(model, freeze, "freeze")
    projects_to_dim = isinstance(projection_head, int) and not isinstance(projection_head, bool)
    if projects_to_dim and projection_head < 1:
        raise InputError(f"projection_head: expected a positive output dim (got {projection_head})")
    if not (projects_to_dim or projection_head is None or isinstance(projection_head, nn.Module)):
        raise InputError(
            f"projection_head: expected None, an int output dim or an nn.Module (got {type(projection_head).__name__})"
        )
    if projects_to_dim and input_size is None:
        raise InputError(
            f"input_size: projection_head={projection_head} builds nn.Linear(D, {projection_head}), and D is measured "
            "with a dummy forward; pass input_size (the per-sample input shape, e.g. (3, 224, 224))"
        )

    base = copy.deepcopy(model)
    for frozen_module in [base] if freeze is True else [base.get_submodule(name) for name in freeze or []]:
        frozen_module.requires_grad_(False)
    embedding_model = EmbeddingModel(base, layer_name)
    if input_size is not None:
        batch = _dummy_batch(base, input_size, input_dtype, batch_size=2)
        features = _checked_forward(embedding_model, batch, "input_size/input_dtype", _INPUT_FIX)
        embedding_model.feature_dim = embedding_model.embedding_dim = features.shape[1]
    if projects_to_dim:
        head_dtype = features.dtype if features.is_floating_point() else None
        embedding_model.head = nn.Linear(features.shape[1], projection_head, device=features.device, dtype=head_dtype)
        embedding_model.embedding_dim = embedding_model.projection_dim = projection_head
    elif projection_head is not None:
        embedding_model.head = projection_head
        embedding_model.embedding_dim = None
        if input_size is not None:
            head_fix = f"pass a projection_head that maps (B, {features.shape[1]}) features to (B, E) embeddings"
            embeddings = _checked_forward(projection_head, features, "projection_head", head_fix)
            if isinstance(embeddings, torch.Tensor) and embeddings.dim() == 2:
                embedding_model.embedding_dim = embeddings.shape[1]
    base_spec = getattr(model, 'builder_spec', None)
    if base_spec is not None and not isinstance(projection_head, nn.Module):
        # rebuildable without pickle: build_model(spec) repeats this cut on a freshly built base
        embedding_model.builder_spec = {'builder': 'embedding_model', 'kwargs': {
            'base': base_spec, 'layer_name': layer_name, 'freeze': freeze if isinstance(freeze, bool) else list(freeze),
            'projection_head': projection_head, 'input_size': None if input_size is None else list(input_size),
            'input_dtype': str(input_dtype).replace('torch.', '')}}
    return embedding_model


def _check_layer_names(model: nn.Module, names: Sequence[Any], field: str) -> None:
    """Raise InputError naming ``field`` unless every name is a submodule path of ``model``."""
    valid_names = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    for name in names:
        if isinstance(name, str) and name in valid_names:
            continue
        suggestions = difflib.get_close_matches(str(name), valid_names, n=5, cutoff=0.6) or valid_names[-5:]
        raise InputError(
            f"{field}: {type(model).__name__} has no layer {name!r}; valid names include "
            f"{', '.join(map(repr, suggestions))} (display(model, input_size) lists the layers that run)"
        )


def _dummy_batch(
    model: nn.Module, input_size: Sequence[int], input_dtype: str | torch.dtype, batch_size: int
) -> torch.Tensor:
    """(batch_size, *input_size) batch on the model's device: uniform [0, 1) if float dtype, else zeros."""
    if not (
        isinstance(input_size, (tuple, list))
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_size)
    ):
        raise InputError(
            "input_size: expected the per-sample input shape without the batch dim, a tuple of positive ints "
            f"such as (3, 224, 224) for images or (128,) for token ids (got {input_size!r})"
        )
    dtype = getattr(torch, input_dtype, None) if isinstance(input_dtype, str) else input_dtype
    if not isinstance(dtype, torch.dtype):
        raise InputError(
            "input_dtype: expected a torch dtype name such as 'float32', or 'int64' for token ids "
            f"(got {input_dtype!r})"
        )
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise InputError(f"batch_size: expected a positive int (got {batch_size!r})")
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    shape = (batch_size, *input_size)
    if dtype.is_floating_point:
        return torch.rand(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)


_INPUT_FIX = (
    "pass the per-sample input_size (without the batch dim) and the input_dtype ('int64' for token ids) "
    "the model expects"
)


def _checked_forward(model: nn.Module, batch: torch.Tensor, field: str, fix: str) -> Any:
    """model(batch) in eval mode under no_grad; training flags are restored.

    A failing forward raises InputError starting with ``field`` and ending with ``fix``, naming the innermost
    layer that was running (its configuration says what it expects) and the input shape that layer got.
    """
    running: list[tuple[str, nn.Module, tuple]] = []  # (name, module, input shapes) of forwards not yet returned

    def enter(name: str):
        def push(module: nn.Module, args: tuple) -> None:
            running.append((name, module, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))))

        return push

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        running.pop()

    training_flags = {module: module.training for module in model.modules()}
    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    model.eval()
    try:
        with torch.no_grad():
            return model(batch)
    except InputError:
        raise
    except Exception as error:
        where = ""
        if running:
            name, module, input_shapes = running[-1]
            layer = f"{type(module).__name__}({module.extra_repr()})"
            where = f" in {'its own forward' if not name else f'layer {name!r} {layer}'}, given input shape(s) " + (
                ", ".join(map(str, input_shapes)) or "none"
            )
        raise InputError(
            f"{field}: the forward of {type(model).__name__} failed on a dummy batch of shape "
            f"{tuple(batch.shape)} and dtype {batch.dtype}{where}: {type(error).__name__}: {error}; {fix}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        for module, was_training in training_flags.items():
            module.training = was_training
