"""FinetunerTrainer: collects labelled docs, fits in the background, publishes model versions."""
from pathlib import Path
from typing import Dict, Optional

from jina import Executor, requests

from executors.data.document_store import StoredDoc
from executors.data.schema import Doc, DocList, Report, report
from executors.errors import InputError
from executors.models import ModelStore
from executors.models.inference import doc_content
from executors.service.parameters import require_docs, validate_parameters
from executors.tuner.service import TrainingService


class FinetunerTrainer(Executor):
    """Endpoints: ``/train`` (store labelled docs), ``/train/clear``, ``/fit`` (tune; parameters
    are fit options, ``wait=True`` blocks until done), ``/fit/cancel`` (stop the running fit), ``/status`` (progress, metrics, versions),
    ``/evaluate`` (embed labelled docs with a ``version``, default the current one, for the Evaluator).

    ``store_dir``: the model store shared with the search flow; ``model_name``; ``model``: the
    base model's builder spec, published as version 1 when the store has none;
    ``input_transform``: the base model's input transform spec (e.g. ``{'modality': 'image',
    'size': [224, 224]}``), stored in version 1's ``model.json`` and inherited by tuned versions;
    every fit and evaluation runs the transform of the version it uses. ``fit_defaults``:
    defaults for the ``/fit`` options; ``promotion``: the gate a fitted version must pass to become
    the store's current (promoted) version, e.g. ``{"metric": "mAP", "min_delta": 0.0}`` (see
    :class:`executors.tuner.service.PromotionGate`).
    """

    def __init__(self, store_dir: str = 'models', model_name: str = 'model', model: Optional[Dict] = None,
                 input_transform: Optional[Dict] = None, fit_defaults: Optional[Dict] = None, seed: int = 0,
                 promotion: Optional[Dict] = None, **kwargs):
        super().__init__(**kwargs)
        if model is None:
            raise InputError('model: FinetunerTrainer needs the base model spec, e.g. '
                             '{"builder": "mlp", "kwargs": {"layer_sizes": [3, 6, 6, 6]}} in uses_with')
        workspace = Path(self.workspace or 'workspace')
        self.service = TrainingService(ModelStore(store_dir), model_name, model, workspace,
                                       input_transform=input_transform, seed=seed, fit_defaults=fit_defaults,
                                       promotion=promotion)

    @requests(on='/train')
    def train(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/train', parameters)
        require_docs('/train', docs)
        stored = [StoredDoc(id=d.id, label=d.label, text=d.text, uri=d.uri, tags=dict(d.tags),
                            tensor=None if d.tensor is None else d.tensor) for d in docs]
        return report({'received': len(docs), 'num_docs': self.service.add(stored)})

    @requests(on='/train/clear')
    def clear(self, parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/train/clear', parameters)
        self.service.clear()
        return report(self.service.status())

    @requests(on='/fit')
    def fit(self, parameters: Dict, **kwargs) -> DocList[Report]:
        options = validate_parameters('/fit', parameters)
        wait = options.pop('wait', False)
        return report(self.service.start_fit(options, wait=wait))

    @requests(on='/fit/cancel')
    def cancel(self, parameters: Dict, **kwargs) -> DocList[Report]:
        """Stop the running fit after its current batch; nothing is published."""
        validate_parameters('/fit/cancel', parameters)
        return report(self.service.cancel())

    @requests(on='/status')
    def status(self, parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/status', parameters)
        return report(self.service.status())

    @requests(on='/evaluate')
    def evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        options = validate_parameters('/evaluate', parameters)
        require_docs('/evaluate', docs)
        vectors, version = self.service.embed([doc_content(d) for d in docs], options.get('version'))
        for doc, vector in zip(docs, vectors):
            doc.embedding, doc.model_version, doc.tensor = vector, version, None
        return docs
