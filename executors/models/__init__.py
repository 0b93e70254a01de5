"""Model builders, safetensors+JSON serialisation and the versioned model store."""
from executors.models.builders import MODEL_BUILDERS, build_model, model_spec, register_builder
from executors.models.serialization import load, save
from executors.models.store import ModelStore, ModelVersion

__all__ = [
    'MODEL_BUILDERS', 'ModelStore', 'ModelVersion', 'build_model', 'load', 'model_spec',
    'register_builder', 'save',
]
