"""Fine-tune embedding models and serve them in FAISS search with Jina executors.

The Python API (Jina-free) is importable from here: ``fit``, ``embed``, ``save``, ``load``,
``display``, ``to_embedding_model``, ``build_model``, ``evaluate_embeddings``, and the
per-modality decoding and model input transforms (``build_decoder``, ``build_transform``,
``attach_transform``, ``transform_of``). The six
executors (``LabelAssigner``, ``Preprocessor``, ``FinetunerTrainer``, ``Encoder``,
``Indexer``, ``Evaluator``) are imported lazily, so using the core does not import Jina.
"""
import importlib

from executors.version import __version__

_LAZY = {
    'fit': 'executors.tuner.trainer', 'embed': 'executors.models.inference',
    'display': 'executors.models.tailor', 'to_embedding_model': 'executors.models.tailor',
    'save': 'executors.models', 'load': 'executors.models', 'build_model': 'executors.models',
    'ModelStore': 'executors.models', 'evaluate_embeddings': 'executors.evaluation.metrics',
    'InputError': 'executors.errors',
    'build_decoder': 'executors.data.decoding', 'build_transform': 'executors.data.transforms',
    'attach_transform': 'executors.data.transforms', 'transform_of': 'executors.data.transforms',
    'LabelAssigner': 'executors.label_assigner.executor', 'Preprocessor': 'executors.preprocessor.executor',
    'FinetunerTrainer': 'executors.finetuner_trainer.executor', 'Encoder': 'executors.encoder.executor',
    'Indexer': 'executors.indexer.executor', 'Evaluator': 'executors.evaluator.executor',
}

__all__ = ['__version__', *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
