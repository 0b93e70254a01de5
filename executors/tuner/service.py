"""The training service behind FinetunerTrainer: collect labelled docs, fit, publish versions.

Jina-free: the executor only parses requests and calls :class:`TrainingService`.

A fit (in a background thread, one at a time) loads the current model version, splits the
collected docs into train and a stratified held-out eval part (``eval_fraction``), measures
retrieval metrics on the eval part before and after tuning, and publishes the tuned model
as a new version (promoted to the store's CURRENT only if :class:`PromotionGate` finds it not
worse than the promoted version on that held-out part) whose ``model.json`` records parent version, fit options, metrics
before/after, per-epoch history and a digest of the training data; a ``loss.png`` is
written beside it.
"""
import hashlib
import inspect
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from executors.data.document_store import DocumentStore, StoredDoc
from executors.data.transforms import attach_transform, build_transform
from executors.errors import ConflictError, InputError, positive_int
from executors.evaluation.metrics import evaluate_embeddings
from executors.evaluation.plots import plot_history
from executors.models import ModelStore, build_model
from executors.models.inference import embed
from executors.tuner.callbacks import Callback, MetricsLogger
from executors.tuner.data import to_labeled_items
from executors.tuner.losses import get_loss
from executors.tuner.miners import build_miner
from executors.tuner.trainer import fit

FIT_DEFAULTS = {'epochs': 10, 'batch_size': 256, 'learning_rate': 1e-3, 'loss': 'SiameseLoss', 'loss_kwargs': {},
                'optimizer': 'adam', 'num_items_per_class': None, 'seed': 0, 'eval_fraction': 0.2, 'eval_k': 10,
                'from_scratch': False, 'miner': None, 'lr_scheduler': None, 'scheduler': None, 'warmup_ratio': 0.0,
                'weight_decay': None}


SCHEDULERS = ('MultiStepLR', 'StepLR', 'ExponentialLR', 'CosineAnnealingLR')


def _loss_of(opts: Dict[str, Any]):
    """The loss module of fit options: ``loss`` with ``loss_kwargs`` and, when given, the ``miner`` spec
    ``{'name': 'TripletEasyHardMiner', 'pos_strategy': ..., 'neg_strategy': ...}``."""
    kwargs = dict(opts['loss_kwargs'] or {})
    if opts.get('miner') is not None:
        try:
            kwargs['miner'] = build_miner(opts['miner'])
        except InputError as error:
            raise InputError(f'parameters.{error}') from error
    return get_loss(opts['loss'], **kwargs)


def _optimizer_of(opts: Dict[str, Any]):
    """None, or with an ``lr_scheduler`` spec ``{'name': 'MultiStepLR', 'milestones': [20, 30], 'gamma': 0.3}``
    (a ``torch.optim.lr_scheduler`` class of SCHEDULERS, stepped after every epoch) a ``configure_optimizer``
    that builds ``optimizer`` at ``learning_rate`` over the trainable parameters plus that scheduler."""
    spec = opts.get('lr_scheduler')
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get('name') not in SCHEDULERS:
        raise InputError(f"parameters.lr_scheduler: expected {{'name': one of {list(SCHEDULERS)}, **settings}}, got {spec!r}")
    from executors.tuner.trainer import OPTIMIZERS

    name = (opts['optimizer'] or 'adam').lower()
    if name not in OPTIMIZERS:
        raise InputError(f"parameters.optimizer: unknown {opts['optimizer']!r}; use one of {sorted(OPTIMIZERS)}")
    settings = {key: value for key, value in spec.items() if key != 'name'}
    scheduler_class = getattr(torch.optim.lr_scheduler, spec['name'])
    try:
        inspect.signature(scheduler_class).bind(None, **settings)
    except TypeError as error:
        raise InputError(f"parameters.lr_scheduler: bad settings for {spec['name']} ({error})") from None

    def configure_optimizer(model):
        optimizer = OPTIMIZERS[name]([p for p in model.parameters() if p.requires_grad], lr=opts['learning_rate'])
        return optimizer, scheduler_class(optimizer, **settings)

    return configure_optimizer


class FitCancelled(Exception):
    """Raised inside a fit's loop when ``/fit/cancel`` asked it to stop."""


class _JobProgress(Callback):
    """Copies the loop's progress into the job's status dict; stops the fit after the current
    batch once ``cancel`` is set."""

    def __init__(self, job: Dict[str, Any], cancel: threading.Event):
        self.job, self.cancel = job, cancel

    def on_train_batch_end(self, tuner):
        if self.cancel.is_set():
            raise FitCancelled('cancelled by /fit/cancel')
        s = tuner.state
        self.job.update(epoch=s.epoch + 1, epochs=s.num_epochs, batch=s.batch_index + 1, batches=s.num_batches,
                        loss=s.current_loss)

    def on_epoch_end(self, tuner):
        self.job['history'] = list(tuner.state.history)


class PromotionGate:
    """Promotes a fitted version (moves the store's CURRENT pointer, which search flows follow) only
    if it is not worse than the promoted version on the same held-out set:
    ``after[metric@k] >= before[metric@k] + min_delta`` (``min_delta`` may be negative to tolerate
    noise). ``enabled=False`` promotes every fit; with no held-out metrics a fit is not promoted
    (nothing to compare) unless ``require_eval=False``. A refused version stays in the store."""

    def __init__(self, metric: str = 'mAP', min_delta: float = 0.0, enabled: bool = True, require_eval: bool = True):
        if not isinstance(metric, str) or not metric:
            raise InputError(f'promotion.metric: expected a metric name such as "mAP" or "NDCG", got {metric!r}')
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta):
            raise InputError(f'promotion.min_delta: expected a finite number, got {min_delta!r}')
        self.metric, self.min_delta, self.enabled, self.require_eval = metric, float(min_delta), enabled, require_eval

    def decide(self, before: Dict[str, float], after: Dict[str, float], parent: Optional[int]) -> Dict[str, Any]:
        """``{'promoted': bool, 'reason': str, 'metric', 'serving', 'candidate', 'compared_with'}``."""
        decision = {'metric': None, 'serving': None, 'candidate': None, 'compared_with': parent}
        if not self.enabled:
            return {**decision, 'promoted': True, 'reason': 'promotion gate disabled: every fit is promoted'}
        key = next((name for name in after if name.split('@')[0] == self.metric), None)
        if key is None or before.get(key) is None or after.get(key) is None:
            if self.require_eval:
                return {**decision, 'promoted': False,
                        'reason': f'no held-out {self.metric} to compare with version {parent} (too few labelled '
                                  'docs per class or eval_fraction 0); the version is kept but not promoted'}
            return {**decision, 'promoted': True, 'reason': 'no held-out metrics; promoted (require_eval is off)'}
        serving, candidate = float(before[key]), float(after[key])
        decision.update(metric=key, serving=serving, candidate=candidate)
        if candidate >= serving + self.min_delta:
            return {**decision, 'promoted': True,
                    'reason': f'{key} {candidate:.4f} >= {serving:.4f} of version {parent} + {self.min_delta:g}'}
        return {**decision, 'promoted': False,
                'reason': f'{key} {candidate:.4f} < {serving:.4f} of version {parent} + {self.min_delta:g} on the '
                          'held-out set; the version is kept in the store but not promoted'}


def validate_fit_options(opts: Dict[str, Any]) -> None:
    """InputError naming the first fit option out of range (before any work starts)."""
    for name in ('epochs', 'batch_size', 'eval_k'):
        positive_int(f'parameters.{name}', opts[name])
    if opts['num_items_per_class'] is not None:
        positive_int('parameters.num_items_per_class', opts['num_items_per_class'])
    rate = opts['learning_rate']
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise InputError(f'parameters.learning_rate: must be a finite number > 0, got {rate!r}')
    fraction = opts['eval_fraction']
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InputError(f'parameters.eval_fraction: must be in [0, 1), got {fraction!r}')


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
                 input_transform: Optional[Dict[str, Any]] = None, seed: int = 0, fit_defaults=None,
                 promotion: Optional[Dict[str, Any]] = None):
        self.store, self.model_name, self.model_spec = store, model_name, model_spec
        self.input_transform = None if input_transform is None else build_transform(input_transform).to_spec()
        self.promotion = PromotionGate(**(promotion or {}))
        self.fit_defaults = {**FIT_DEFAULTS, **(fit_defaults or {})}
        unknown = set(self.fit_defaults) - set(FIT_DEFAULTS)
        if unknown:
            raise InputError(f'fit_defaults: unknown option(s) {sorted(unknown)}; known: {sorted(FIT_DEFAULTS)}')
        Path(workspace).mkdir(parents=True, exist_ok=True)
        self.workspace = Path(workspace)
        self.data = DocumentStore(Path(workspace) / 'training.sqlite')
        self.seed = seed
        self._lock = threading.Lock()
        self.job: Dict[str, Any] = {'state': 'idle'}
        self._thread: Optional[threading.Thread] = None
        self._cancel = threading.Event()
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
                raise ConflictError('/train/clear: a fit is running on the collected docs; wait for it to finish '
                                    'or stop it with /fit/cancel')
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
        if opts['loss'] != self.fit_defaults['loss'] and 'loss_kwargs' not in options:
            opts['loss_kwargs'] = {}  # the default loss_kwargs are settings of the default loss only
        validate_fit_options(opts)
        _loss_of(opts)  # a bad loss, miner or scheduler is the caller's error, now
        _optimizer_of(opts)
        docs = self._load_docs()
        if not docs:
            raise InputError('/fit: no training docs collected; send labelled docs to /train first')
        items = to_labeled_items(([d.tensor if d.tensor is not None else d.text for d in docs],
                                  [d.label for d in docs]))
        with self._lock:
            if self.job['state'] == 'running':
                raise ConflictError('/fit: a fit is already running; poll /status and retry when it has finished, '
                                    'or stop it with /fit/cancel')
            self._cancel.clear()
            self.job = {'state': 'running', 'job_id': f'{int(time.time() * 1000)}', 'started': time.time(),
                        'num_docs': len(docs), 'options': opts}
            self._thread = threading.Thread(target=self._run, args=(self.job, docs, items, opts), daemon=True)
            self._thread.start()
        if wait:
            self._thread.join()
        return self.status()

    def cancel(self, wait: bool = True) -> Dict[str, Any]:
        """Stop the running fit after its current batch (nothing is published); ConflictError if
        none runs. Returns the job status (``state: cancelled`` once stopped when ``wait``)."""
        with self._lock:
            if self.job['state'] != 'running':
                raise ConflictError('/fit/cancel: no fit is running; start one with /fit')
            self._cancel.set()
            thread = self._thread
        if wait and thread is not None:
            thread.join()
        return self.status()

    def _run(self, job, docs, items, opts) -> None:
        try:
            job.update(self._fit(job, docs, items, opts))
            job['state'] = 'done'
        except FitCancelled:
            job['state'] = 'cancelled'
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
        serving = before
        if opts['from_scratch'] and held_out is not None and k >= 1:  # the gate compares with the promoted version
            promoted, _ = self.store.load(self.model_name, parent)
            serving = evaluate_embeddings(embed(held_out[0], promoted), held_out[1], k=k)
        configure_optimizer = _optimizer_of(opts)
        fit(model, train, held_out, loss=_loss_of(opts), epochs=opts['epochs'],
            batch_size=opts['batch_size'], learning_rate=opts['learning_rate'],
            optimizer=None if configure_optimizer else opts['optimizer'], configure_optimizer=configure_optimizer,
            scheduler_step='epoch' if configure_optimizer else 'batch', num_items_per_class=opts['num_items_per_class'],
            seed=opts['seed'], eval_k=max(k, 1), scheduler=opts['scheduler'], warmup_ratio=opts['warmup_ratio'],
            weight_decay=opts['weight_decay'],
            callbacks=[_JobProgress(job, self._cancel), MetricsLogger(self.workspace / 'fit_log.jsonl')],
            progress_bar=False)
        history = job.get('history', [])
        after = evaluate()
        clean = lambda d: {k_: (None if isinstance(v, float) and math.isnan(v) else v) for k_, v in d.items()}
        promotion = self.promotion.decide(serving, after, parent)
        job['promotion'] = promotion
        published = self.store.publish(self.model_name, model, make_current=promotion['promoted'], metadata={
            'stage': 'tuned', 'parent': parent,
            'fit': {k_: v for k_, v in opts.items()}, 'metrics_before': before, 'metrics_after': after,
            'history': [clean(h) for h in history], 'training_data_digest': data_digest(docs),
            'num_train': int(len(train_idx)), 'num_eval': int(len(eval_idx)), 'created': time.time(),
            'promotion': promotion})
        if history:
            plot_history(history, published.path / 'loss.png')
        return {'version': published.version, 'parent': parent, 'metrics_before': before, 'metrics_after': after,
                'promotion': promotion}

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
