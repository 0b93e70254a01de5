"""The old Finetuner 0.4.x API on top of this package (``import executors as finetuner``).

Two things live here, both small and Jina-free:

* :func:`check_fit_arguments`: the arguments of an old ``finetuner.fit`` call that this ``fit`` spells
  differently. The one accepted rename (``embed_model=`` for ``model``) is translated; every other old
  name is refused with an :class:`~executors.errors.InputError` that says what to write instead. Other
  unknown keywords and extra positional arguments are a ``TypeError``, as Python reports them.
* :data:`MODULE_ALIASES` and :func:`install_module_aliases`: the old module paths
  (``executors.tailor``, ``executors.tuner.pytorch.losses``, ``executors.tuner.callback``, ...) resolve to
  the modules that hold the same classes now, for attribute access and for ``from ... import``.
"""
import importlib
import importlib.abc
import importlib.util
import sys

from executors.errors import InputError

# old Finetuner keyword -> what to write now (None: accepted and translated in check_fit_arguments)
REFUSED_FIT_ARGUMENTS = {
    'tag_key': "the label is read from doc.label or tags['finetuner_label']; copy your tag there "
               "(or pass (inputs, labels))",
    'output_dim': 'projection_head=<int> (with to_embedding_model=True and input_size=...)',
    'bottleneck_net': 'projection_head=<nn.Module> (with to_embedding_model=True)',
    'freeze_layers': "freeze=['layer', ...] (with to_embedding_model=True)",
    'head_layer': "loss='SiameseLoss' / 'TripletLoss' / ... or a loss module",
    'query_data': 'callbacks=[EvaluationCallback(query_data, index_data, k=..., distance=...)]',
    'index_data': 'callbacks=[EvaluationCallback(query_data, index_data, k=..., distance=...)]',
    'limit': 'EvaluationCallback(..., k=<limit>) for retrieval metrics, or eval_k=<limit> with eval_data',
    'distance': "the loss's distance (e.g. TripletLoss(distance='euclidean')) and eval_distance= for metrics",
    'interactive': 'label the data first (LabelAssigner, or doc.label); there is no labeling UI',
    'clear_labels_on_start': 'label the data first (LabelAssigner, or doc.label); there is no labeling UI',
    'port_expose': 'label the data first (LabelAssigner, or doc.label); there is no labeling UI',
    'runtime_backend': 'label the data first (LabelAssigner, or doc.label); there is no labeling UI',
}


def check_fit_arguments(model, positional: tuple, legacy: dict, known: tuple = ()):
    """``model`` (taking the old ``embed_model=`` keyword) after refusing old-only arguments of ``fit``.

    ``positional``: arguments after ``eval_data``; ``known``: fit's argument names, suggested for a typo. The old ``fit`` forwarded them to both the Tailor and
    the Tuner, whose orders differed, so they are refused: pass them by keyword.
    """
    if positional:
        raise TypeError(f'fit() takes model, train_data and eval_data positionally but got {len(positional)} more; '
                        'pass the others by keyword, e.g. fit(model, train_data, eval_data, epochs=10, loss=...)')
    legacy = dict(legacy)
    if 'embed_model' in legacy:
        if model is not None:
            raise InputError('embed_model: the same as model; give only one of them')
        model = legacy.pop('embed_model')
    for name in legacy:
        if name in REFUSED_FIT_ARGUMENTS:
            raise InputError(f'{name}: an old Finetuner argument that fit does not take; '
                             f'write {REFUSED_FIT_ARGUMENTS[name]}')
    if legacy:  # a typo, as Python reports it, with the closest argument names
        import difflib

        name = sorted(legacy)[0]
        close = difflib.get_close_matches(name, list(known), n=3)
        raise TypeError(f"fit() got an unexpected keyword argument {name!r}"
                        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else ''))
    if model is None:
        raise InputError('model: required; pass the torch.nn.Module to tune as the first argument')
    return model


# old module path (under ``executors.``) -> the module that holds its names now
MODULE_ALIASES = {
    'executors.tailor': 'executors.models.tailor',
    'executors.embedding': 'executors.models.inference',
    'executors.tuner.pytorch': 'executors.tuner',
    'executors.tuner.pytorch.losses': 'executors.tuner.losses',
    'executors.tuner.pytorch.miner': 'executors.tuner.miners',
    'executors.tuner.callback': 'executors.tuner.callbacks',
    'executors.tuner.miner': 'executors.tuner.miners',
}


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module that replaced it (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MODULE_ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(MODULE_ALIASES[spec.name])

    def exec_module(self, module):
        pass


def install_module_aliases() -> None:
    """Let the old module paths import (idempotent)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # before the path finder, which would load a second copy


def alias_attribute(package: str, name: str):
    """``package.name`` for an old submodule name (``executors.tailor``), or AttributeError."""
    fullname = f'{package}.{name}'
    if fullname not in MODULE_ALIASES:
        raise AttributeError(f'module {package!r} has no attribute {name!r}')
    install_module_aliases()
    return importlib.import_module(fullname)
