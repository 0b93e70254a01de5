"""The training service behind FinetunerTrainer: collect labelled docs, fit, publish versions.

Jina-free: the executor only parses requests and calls :class:`TrainingService`.

A fit (in a background thread, one at a time) loads the current model version, splits the
collected docs into train and a stratified held-out eval part (``eval_fraction``), measures
retrieval metrics on the eval part before and after tuning, and publishes the tuned model
as a new version whose ``model.json`` records parent version, fit options, metrics
before/after, per-epoch history and a digest of the training data; a ``loss.png`` is
written beside it.
"""
import hashlib
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from executors.data.transforms import attach_transform, build_transform
from executors.models.inference import embed
from executors.errors import InputError
from executors.data.document_store import DocumentStore, StoredDoc
from executors.evaluation.metrics import evaluate_embeddings
from executors.models import ModelStore, build_model
from executors.evaluation.plots import plot_history
from executors.tuner.callbacks import Callback
from executors.tuner.data import to_labeled_items
from executors.tuner.losses import get_loss
from executors.tuner.trainer import fit

FIT_DEFAULTS = {'epochs': 10, 'batch_size': 256, 'learning_rate': 1e-3, 'loss': 'SiameseLoss', 'loss_kwargs': {},
                'optimizer': 'adam', 'num_items_per_class': None, 'seed': 0, 'eval_fraction': 0.2, 'eval_k': 10,
                'from_scratch': False, 'scheduler': None, 'warmup_ratio': 0.0, 'weight_decay': None}


class _JobProgress(Callback):
    """Copies the loop's progress into the job's status dict."""

    def __init__(self, job: Dict[str, Any]):
        self.job = job

    def on_train_batch_end(self, tuner):
        s = tuner.state
        self.job.update(epoch=s.epoch + 1, epochs=s.num_epochs, batch=s.batch_index + 1, batches=s.num_batches,
                        loss=s.current_loss)

    def on_epoch_end(self, tuner):
        self.job['history'] = list(tuner.state.history)


def stratified_split(labels: np.ndarray, fraction: float, seed: int):
    """Index arrays ``(train, eval)``: of each class ``c`` with at least 4 items,
    ``max(2, round(fraction * n_c))`` go to eval (two, so every held-out query has a relevant
    item), the rest (at least 2) to train; smaller classes stay in train."""
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_eval = 0 if len(members) < 4 or fraction <= 0 else min(len(members) - 2,
                                                                  max(2, int(round(fraction * len(members)))))
        held_out.extend(members[:n_eval])
        train.extend(members[n_eval:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(held_out, dtype=np.int64))


def data_digest(docs: List[StoredDoc]) -> str:
    """sha256 over the training docs' ids, labels and contents (identifies the training data)."""
    h = hashlib.sha256()
    for doc in sorted(docs, key=lambda d: d.id):
        h.update(f'{doc.id}\0{doc.label}\0{doc.text}\0{doc.uri}\0'.encode())
        if doc.tensor is not None:
            h.update(np.ascontiguousarray(doc.tensor).tobytes())
    return h.hexdigest()


class TrainingService:
    """Training docs (decoded values) in ``<workspace>/training.sqlite``; tuned models in ``store``.

    ``input_transform``: the base model's input transform spec (see :mod:`executors.data.transforms`),
    attached to version 1 (and to a ``from_scratch`` model); a tuned version inherits the transform
    of the version it was tuned from, and ``fit``/``embed`` run the transform of the version at hand.
    """

    def __init__(self, store: ModelStore, model_name: str, model_spec: Dict[str, Any], workspace,
                 input_transform: Optional[Dict[str, Any]] = None, seed: int = 0, fit_defaults=None):
        self.store, self.model_name, self.model_spec = store, model_name, model_spec
        self.input_transform = None if input_transform is None else build_transform(input_transform).to_spec()
        self.fit_defaults = {**FIT_DEFAULTS, **(fit_defaults or {})}
        unknown = set(self.fit_defaults) - set(FIT_DEFAULTS)
        if unknown:
            raise InputError(f'fit_defaults: unknown option(s) {sorted(unknown)}; known: {sorted(FIT_DEFAULTS)}')
        Path(workspace).mkdir(parents=True, exist_ok=True)
        self.data = DocumentStore(Path(workspace) / 'training.sqlite')
        self.seed = seed
        self._lock = threading.Lock()
        self.job: Dict[str, Any] = {'state': 'idle'}
        self._thread: Optional[threading.Thread] = None
        self.ensure_initial_version()

    def ensure_initial_version(self) -> int:
        """Publish the untuned base model as version 1 if the store has no version yet."""
        current = self.store.current_version(self.model_name)
        if current is None:
            model = attach_transform(build_model(self.model_spec, seed=self.seed), self.input_transform)
            current = self.store.publish(self.model_name, model, {
                'stage': 'initial', 'parent': None, 'seed': self.seed, 'created': time.time()}).version
        return current

    def add(self, docs: List[StoredDoc]) -> int:
        """Store labelled training docs (upsert by id); returns the number now held."""
        for doc in docs:
            if doc.label is None:
                raise InputError(f'docs[{doc.id}].label: missing; set label (or tags.finetuner_label), '
                                 'or configure the LabelAssigner with a rule that labels it')
            if doc.tensor is None and doc.text is None:
                raise InputError(f'docs[{doc.id}]: has no tensor or text to train on')
        self.data.upsert(docs)
        return self.data.count()

    def clear(self) -> None:
        with self._lock:
            if self.job['state'] == 'running':
                raise InputError('/train/clear: a fit is running; wait for it to finish')
            self.data.close()
            path = self.data.path
            for suffix in ('', '-wal', '-shm'):
                Path(str(path) + suffix).unlink(missing_ok=True)
            self.data = DocumentStore(path)

    def _load_docs(self) -> List[StoredDoc]:
        docs, after = [], 0
        while True:
            page = self.data.page(after, 1000)
            if not page:
                return docs
            docs.extend(doc for _, doc in page)
            after = page[-1][0]

    def start_fit(self, options: Dict[str, Any], wait: bool = False) -> Dict[str, Any]:
        """Validate, then fit in a background thread (or block if ``wait``); returns the job status."""
        opts = {**self.fit_defaults, **options}
        if not 0 <= opts['eval_fraction'] < 1:
            raise InputError(f'parameters.eval_fraction: must be in [0, 1), got {opts["eval_fraction"]}')
        get_loss(opts['loss'], **(opts['loss_kwargs'] or {}))  # a bad loss is the caller's error, now
        docs = self._load_docs()
        if not docs:
            raise InputError('/fit: no training docs collected; send labelled docs to /train first')
        items = to_labeled_items(([d.tensor if d.tensor is not None else d.text for d in docs],
                                  [d.label for d in docs]))
        with self._lock:
            if self.job['state'] == 'running':
                raise InputError('/fit: a fit is already running; poll /status and retry when it has finished')
            self.job = {'state': 'running', 'job_id': f'{int(time.time() * 1000)}', 'started': time.time(),
                        'num_docs': len(docs), 'options': opts}
            self._thread = threading.Thread(target=self._run, args=(self.job, docs, items, opts), daemon=True)
            self._thread.start()
        if wait:
            self._thread.join()
        return self.status()

    def _run(self, job, docs, items, opts) -> None:
        try:
            job.update(self._fit(job, docs, items, opts))
            job['state'] = 'done'
        except Exception as e:  # noqa: BLE001 - reported through /status
            job.update(state='failed', error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc())
        job['finished'] = time.time()

    def _fit(self, job, docs, items, opts) -> Dict[str, Any]:
        parent = self.store.current_version(self.model_name)
        if opts['from_scratch']:
            model = attach_transform(build_model(self.model_spec, seed=opts['seed']), self.input_transform)
        else:
            model, _ = self.store.load(self.model_name, parent)  # with the parent version's input transform
        train_idx, eval_idx = stratified_split(items.labels, opts['eval_fraction'], opts['seed'])
        contents = items.contents
        train = ([contents[i] for i in train_idx], items.labels[train_idx])
        held_out = ([contents[i] for i in eval_idx], items.labels[eval_idx]) if len(eval_idx) >= 2 else None
        k = min(opts['eval_k'], len(eval_idx) - 1) if held_out else 0

        def evaluate():
            if held_out is None or k < 1:
                return {}
            return evaluate_embeddings(embed(held_out[0], model), held_out[1], k=k)

        before = evaluate()
        fit(model, train, held_out, loss=opts['loss'], loss_kwargs=opts['loss_kwargs'], epochs=opts['epochs'],
            batch_size=opts['batch_size'], learning_rate=opts['learning_rate'], optimizer=opts['optimizer'],
            num_items_per_class=opts['num_items_per_class'], seed=opts['seed'], eval_k=max(k, 1),
            scheduler=opts['scheduler'], warmup_ratio=opts['warmup_ratio'], weight_decay=opts['weight_decay'],
            callbacks=[_JobProgress(job)], progress_bar=False)
        history = job.get('history', [])
        after = evaluate()
        clean = lambda d: {k_: (None if isinstance(v, float) and math.isnan(v) else v) for k_, v in d.items()}
        published = self.store.publish(self.model_name, model, {
            'stage': 'tuned', 'parent': parent,
            'fit': {k_: v for k_, v in opts.items()}, 'metrics_before': before, 'metrics_after': after,
            'history': [clean(h) for h in history], 'training_data_digest': data_digest(docs),
            'num_train': int(len(train_idx)), 'num_eval': int(len(eval_idx)), 'created': time.time()})
        if history:
            plot_history(history, published.path / 'loss.png')
        return {'version': published.version, 'parent': parent, 'metrics_before': before, 'metrics_after': after}

    def embed(self, contents: List[Any], version: Optional[int] = None):
        """``(embeddings [N, D], version)`` of ``contents`` by the given (default: current) version."""
        resolved = self.store.resolve(self.model_name, version)
        model, _ = self.store.load(self.model_name, resolved.version)
        return embed(contents, model), resolved.version

    def status(self) -> Dict[str, Any]:
        """The last/current job plus the store's versions and the collected data size."""
        job = {k: v for k, v in self.job.items() if k != 'traceback'}
        return {'job': job, 'num_docs': self.data.count(), 'model_name': self.model_name,
                'current_version': self.store.current_version(self.model_name),
                'versions': self.store.versions(self.model_name)}
