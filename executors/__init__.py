"""Fine-tune embedding models and serve them in FAISS search with Jina executors.

The Python API (Jina-free) is importable from here: ``fit``, ``embed``, ``save``, ``load``,
``display``, ``to_embedding_model``, ``build_model``, ``evaluate_embeddings``, and the
per-modality decoding and model input transforms (``build_decoder``, ``build_transform``,
``attach_transform``, ``transform_of``). The six
executors (``LabelAssigner``, ``Preprocessor``, ``FinetunerTrainer``, ``Encoder``,
``Indexer``, ``Evaluator``) are imported lazily, so using the core does not import Jina.

Code written for the old Finetuner 0.4.x runs with ``import executors as finetuner``: losses, miners
and callbacks are importable from here too (``executors.TripletLoss``, ``executors.EarlyStopping``), and
the old module paths (``executors.tailor``, ``executors.tuner.pytorch.losses``,
``executors.tuner.callback``) resolve (see :mod:`executors.legacy`).
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
    **{name: 'executors.tuner.losses' for name in (
        'SiameseLoss', 'TripletLoss', 'NTXentLoss', 'MultipleNegativesRankingLoss', 'ArcFaceLoss',
        'MultiSimilarityLoss')},
    **{name: 'executors.tuner.miners' for name in (
        'AllPairsMiner', 'AllTripletsMiner', 'SiameseEasyHardMiner', 'TripletEasyHardMiner', 'SessionMiner')},
    **{name: 'executors.tuner.callbacks' for name in (
        'Callback', 'ProgressBar', 'EvaluationCallback', 'EarlyStopping', 'BestModelCheckpoint',
        'TrainingCheckpoint', 'MetricsLogger', 'WandBLogger', 'TensorBoardLogger')},
    **{name: 'executors.tuner.samplers' for name in ('ClassSampler', 'SessionSampler', 'ShuffleSampler')},
}

__all__ = ['__version__', *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ('tuner', 'models', 'data', 'search', 'evaluation', 'service'):  # subpackages, as attributes
        return importlib.import_module(f'{__name__}.{name}')
    from executors.legacy import alias_attribute

    return alias_attribute(__name__, name)  # old module names (executors.tailor, ...), else AttributeError


def _install_module_aliases():
    from executors.legacy import install_module_aliases

    install_module_aliases()


_install_module_aliases()
