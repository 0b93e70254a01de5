"""The training loop behind :func:`fit` (embedding inference is :mod:`executors.models.inference`).

``fit`` tunes any ``torch.nn.Module`` mapping a batch of inputs to embeddings ``[B, D]``
with a metric-learning loss ``loss(embeddings [B, D], labels [B]) -> scalar``.
"""
import contextlib
import inspect
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from executors.data.transforms import TransformCollate, transform_of
from executors.errors import InputError, positive_int
from executors.models.inference import to_device
from executors.tuner import distributed as dist_utils
from executors.tuner.callbacks import Callback, ProgressBar
from executors.tuner.data import CLASS, LabeledItems, align_labels, make_batch, to_labeled_items
from executors.tuner.schedules import check_schedule, check_warmup_ratio, make_schedule

OPTIMIZERS = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW, 'sgd': torch.optim.SGD,
              'rmsprop': torch.optim.RMSprop}
SCHEDULER_STEPS = ('batch', 'epoch')


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainingState:
    """What callbacks read (and ``stop_training``, which they may set)."""

    num_epochs: int
    epoch: int = 0
    num_batches: int = 0
    batch_index: int = 0
    current_loss: float = math.nan
    train_loss: float = math.nan      # mean over the last train epoch
    val_loss: float = math.nan        # mean over the last validation pass
    metrics: Dict[str, float] = field(default_factory=dict)   # last epoch: train_loss, val_loss, retrieval metrics
    history: List[Dict[str, float]] = field(default_factory=list)  # one ``metrics`` dict per epoch
    stop_training: bool = False
    empty_batches: int = 0            # batches of the last train epoch that gave the loss no pair/triplet
    stopped_reason: Optional[str] = None  # why training stopped early when not by a callback (non-finite loss)


class Tuner:
    """Holds model, optimiser, data and callbacks for one fit; see :func:`fit`."""

    def __init__(self, model: nn.Module, train_items: LabeledItems, eval_items: Optional[LabeledItems], *,
                 loss: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scheduler_step: str,
                 epochs: int, batch_size: int, num_items_per_class: Optional[int], device: torch.device,
                 preprocess_fn, collate_fn, callbacks: List[Callback], seed: Optional[int],
                 gradient_accumulation_steps: int, max_grad_norm: Optional[float], mixed_precision: bool,
                 eval_k: int, eval_distance: str, distributed: bool = False):
        self.model, self.train_items, self.eval_items = model, train_items, eval_items
        self.loss, self.optimizer, self.scheduler, self.scheduler_step = loss, optimizer, scheduler, scheduler_step
        self.batch_size, self.device = batch_size, device
        self.preprocess_fn, self.collate_fn, self.callbacks = preprocess_fn, collate_fn, callbacks
        self.seed = seed
        self.gradient_accumulation_steps, self.max_grad_norm = gradient_accumulation_steps, max_grad_norm
        self.mixed_precision = mixed_precision
        self.eval_k, self.eval_distance = eval_k, eval_distance
        self.distributed = distributed
        if distributed:
            # multi-process (torchrun): every rank builds the same global batches (batch_size * world_size,
            # one shared seed) and keeps its contiguous slice of each; see executors.tuner.distributed
            global_batch_size = batch_size * dist_utils.get_world_size()
            self.sampler = dist_utils.DistributedBatchSampler(
                _make_sampler(train_items, global_batch_size, num_items_per_class, dist_utils.shared_seed(seed),
                              loss))
            # only the training forward goes through DDP; self.model stays unwrapped for validation,
            # callbacks and checkpoints (same state-dict keys as a single-process run)
            self.train_model = dist_utils.wrap_model(model, device)
        else:
            self.sampler = _make_sampler(train_items, batch_size, num_items_per_class, seed, loss)
            self.train_model = model
        self.state = TrainingState(num_epochs=epochs)
        self.start_epoch = 0
        self.scaler = torch.amp.GradScaler('cuda') if (mixed_precision and device.type == 'cuda') else None

    def _hook(self, name: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, name)(self, *args)

    def _autocast(self):
        if not self.mixed_precision:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == 'cuda' else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    @property
    def embedding_model(self) -> nn.Module:
        """The user's model (without fit's wrapper for losses that have parameters)."""
        return self.model.model if isinstance(self.model, _ModelWithLossParameters) else self.model

    def _forward_loss(self, indices: Sequence[int]) -> torch.Tensor:
        inputs, labels = make_batch(self.train_items, indices, self.preprocess_fn, self.collate_fn)
        with self._autocast():
            embeddings = self.train_model(to_device(inputs, self.device))
        embeddings, labels = embeddings.float(), labels.to(self.device)
        if self.distributed:
            # the loss sees the global batch, so negatives come from every process; no factor is needed:
            # gather_batch's backward sums over ranks (x world_size), DDP averages (/ world_size)
            embeddings, labels = dist_utils.gather_batch(embeddings, labels)
        return self.loss(embeddings, labels)

    def _train_epoch(self) -> None:
        state = self.state
        self.train_model.train()
        self.sampler.set_epoch(state.epoch)
        state.num_batches = len(self.sampler)
        self._hook('on_train_epoch_begin')
        losses = []
        state.empty_batches = 0
        self.optimizer.zero_grad(set_to_none=True)
        for state.batch_index, indices in enumerate(self.sampler):
            self._hook('on_train_batch_begin')
            loss = self._forward_loss(indices)
            state.empty_batches += bool(getattr(self.loss, 'found_no_terms', False))
            if not torch.isfinite(loss.detach()):
                self._stop_non_finite(f'the loss is {float(loss.detach())}')
                break
            window_start = state.batch_index - state.batch_index % self.gradient_accumulation_steps
            window = min(self.gradient_accumulation_steps, state.num_batches - window_start)
            scaled = loss / window  # the mean over the batches of this (possibly shorter, last) window
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            last = state.batch_index + 1 == state.num_batches
            if (state.batch_index + 1) % self.gradient_accumulation_steps == 0 or last:
                if self.scaler is None and not _finite_gradients(self.model):
                    self._stop_non_finite('its gradient holds NaN or inf')
                    break
                self._optimizer_step()
            state.current_loss = float(loss.detach())
            losses.append(state.current_loss)
            self._hook('on_train_batch_end')
        if state.empty_batches:
            warnings.warn(f'fit: {state.empty_batches} of {state.num_batches} batches of epoch {state.epoch + 1} '
                          f'gave {type(self.loss).__name__} no pair or triplet to learn from (loss 0, no gradient); '
                          'set num_items_per_class (or a larger batch_size) so batches hold positives and negatives',
                          RuntimeWarning, stacklevel=2)
        if self.scheduler is not None and self.scheduler_step == 'epoch':
            self.scheduler.step()
        state.train_loss = float(np.mean(losses)) if losses else math.nan
        self._hook('on_train_epoch_end')

    def _stop_non_finite(self, what: str) -> None:
        """Skip this batch's update, keep the weights of the last finite step and stop the run."""
        state = self.state
        self.optimizer.zero_grad(set_to_none=True)
        state.stop_training = True
        state.stopped_reason = (f'non-finite loss: at epoch {state.epoch + 1}, batch {state.batch_index + 1} '
                                f'{what}; training stopped and the model keeps the weights of the last finite '
                                'update (lower learning_rate, set max_grad_norm, or check the inputs)')
        warnings.warn(f'fit: {state.stopped_reason}', RuntimeWarning, stacklevel=3)

    def _optimizer_step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None and self.scheduler_step == 'batch':
            self.scheduler.step()

    @torch.no_grad()
    def _validate(self) -> None:
        from executors.evaluation.metrics import evaluate_embeddings

        state = self.state
        self.model.eval()
        self._hook('on_val_begin')
        # whole classes (sessions) per batch, so pair losses see their pairs; labels are the training ids
        # (eval_data's own labels are mapped with the training label map in fit)
        num_classes = getattr(self.loss, 'num_classes', None)  # losses with class weights (ArcFace)
        per_label = getattr(self.loss, 'items_per_label', None)
        # a pair loss over eval data whose labels are not all exact pairs (e.g. a stratified hold-out):
        # scored on sampled pair batches of the eval embeddings instead of whole-class batches
        pair_loss = per_label is not None and self.eval_items.kind == CLASS and \
            bool((np.unique(self.eval_items.labels, return_counts=True)[1] != per_label).any())
        losses, weights, embeddings, all_labels = [], [], [], []
        for indices in _validation_batches(self.eval_items, self.batch_size):
            self._hook('on_val_batch_begin')
            inputs, labels = make_batch(self.eval_items, indices, self.preprocess_fn, self.collate_fn)
            with self._autocast():
                batch_embeddings = self.model(to_device(inputs, self.device)).float()
            labels = labels.to(self.device)
            known = labels < num_classes if num_classes is not None else torch.ones_like(labels, dtype=torch.bool)
            if not pair_loss and known.any():  # a class-weight loss has no centre for a label unseen in training
                losses.append(float(self.loss(batch_embeddings[known], labels[known])))
                weights.append(int(known.sum()))
            embeddings.append(batch_embeddings.cpu().numpy())
            all_labels.append(labels.cpu().numpy())
            self._hook('on_val_batch_end')
        if pair_loss:  # any number of eval items per label: score the loss on pair batches of the embeddings
            losses = _pair_batch_losses(self.loss, np.concatenate(embeddings), np.concatenate(all_labels),
                                        self.batch_size, self.device)
            weights = [1] * len(losses)
        state.val_loss = float(np.average(losses, weights=weights)) if losses else math.nan
        state.metrics.update(evaluate_embeddings(np.concatenate(embeddings), np.concatenate(all_labels),
                                                 k=self.eval_metric_k, distance=self.eval_distance))
        state.metrics['val_loss'] = state.val_loss
        self._hook('on_val_end')

    @property
    def eval_metric_k(self) -> int:
        """The ``k`` of the retrieval metrics of ``eval_data`` (``eval_k``, capped by the candidates)."""
        return min(self.eval_k, len(self.eval_items) - 1)

    def expected_metrics(self, before: Callback) -> Optional[List[str]]:
        """The ``state.metrics`` keys that callback ``before`` will see at ``on_epoch_end``, or None when
        an earlier callback that may add metrics does not say which (see ``Callback.metric_names``)."""
        from executors.evaluation.metrics import metric_keys

        names = ['train_loss']
        if self.eval_items is not None:
            names += ['val_loss', *metric_keys(self.eval_metric_k)]
        for callback in self.callbacks:
            if callback is before:
                break
            added = callback.metric_names(self)
            if added is None:
                return None
            names += list(added)
        return names

    def run(self) -> nn.Module:
        state = self.state
        self.model.to(self.device)
        try:
            self._hook('on_fit_begin')
            for state.epoch in range(self.start_epoch, state.num_epochs):
                state.metrics = {}
                self._hook('on_epoch_begin')
                self._train_epoch()
                state.metrics['train_loss'] = state.train_loss
                if self.eval_items is not None:
                    self._validate()
                state.history.append({'epoch': state.epoch + 1, **state.metrics})
                self._hook('on_epoch_end')
                if self.distributed:  # stop together: a rank-0-only callback may have asked to stop
                    state.stop_training = dist_utils.any_process(state.stop_training)
                if state.stop_training:
                    break
            self._hook('on_fit_end')
        except KeyboardInterrupt:
            self._hook('on_keyboard_interrupt')
            raise
        except Exception as e:  # noqa: BLE001 - callbacks see every failure, then it propagates
            self._hook('on_exception', e)
            raise
        self.model.eval()
        return self.model


def _finite_gradients(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _validation_batches(items: LabeledItems, batch_size: int) -> List[List[int]]:
    """Item indices in batches of at most ``batch_size`` embeddings that keep each class (each session
    for session data) whole, in order of first appearance; a class larger than a batch is cut."""
    keys = items.sessions if items.sessions is not None else items.labels
    groups: Dict[int, List[int]] = {}
    for index, key in enumerate(keys.tolist()):
        groups.setdefault(key, []).append(index)
    per_batch = max(1, batch_size // items.views_per_item)
    batches, batch = [], []
    for group in groups.values():
        for start in range(0, len(group), per_batch):
            chunk = group[start:start + per_batch]
            if batch and len(batch) + len(chunk) > per_batch:
                batches.append(batch)
                batch = []
            batch = batch + chunk
    return batches + ([batch] if batch else [])


def default_items_per_class(labels: np.ndarray, batch_size: int, items_per_label: Optional[int] = None):
    """``(m, batch)``: the class-balanced batches used when ``num_items_per_class`` is None, ``batch // m``
    classes with ``m`` items each, or None when fewer than two classes of two items fit in a batch.

    With ``C`` classes of at least two items, the smallest of which has ``n_min`` items, ``m`` is the smallest
    divisor of ``batch_size`` in ``[max(2, batch_size // C), n_min]`` that leaves at least two and at most as
    many classes per batch as there are classes of ``m`` items (so the batch keeps its size and every class
    of two or more items is sampled); without such a divisor ``m = min(max(2, batch_size // C), n_min)`` and
    the batch shrinks to ``m * min(batch_size // m, #classes with >= m items)``. A loss defined only on
    exactly ``items_per_label`` items per label gets that ``m``. Classes of one item are never sampled.
    """
    counts = np.bincount(labels)
    counts = counts[counts >= 2]
    if len(counts) < 2:
        return None

    def classes_per_batch(m):
        return min(batch_size // m, int((counts >= m).sum()))

    if items_per_label is not None:
        m = items_per_label
    else:
        low, n_min = max(2, batch_size // len(counts)), int(counts.min())
        fitting = [m for m in range(low, min(n_min, batch_size) + 1)
                   if batch_size % m == 0 and 2 <= batch_size // m <= int((counts >= m).sum())]
        m = fitting[0] if fitting else min(low, n_min)
    classes = classes_per_batch(m)
    return None if classes < 2 else (m, m * classes)


def _make_sampler(items: LabeledItems, batch_size: int, num_items_per_class: Optional[int], seed, loss=None):
    from executors.tuner.samplers import ClassSampler, SessionSampler, ShuffleSampler

    if items.sessions is not None:
        if num_items_per_class is not None:
            raise InputError('num_items_per_class: applies to class data; session data is batched by whole sessions')
        return SessionSampler(items.sessions, batch_size, seed=seed)
    if num_items_per_class is not None:
        if items.views_per_item > 1:
            raise InputError('num_items_per_class: applies to labelled data only, not to unlabelled instance data')
        return ClassSampler(items.labels, batch_size, num_items_per_class, seed=seed)
    items_per_label = getattr(loss, 'items_per_label', None)
    fits_one_batch = len(items) <= batch_size and items_per_label is None  # one batch holds every positive
    if items.kind == CLASS and not fits_one_batch:  # balanced classes, so every batch holds positives
        balanced = default_items_per_class(items.labels, batch_size, items_per_label)
        if balanced is not None:  # (ClassSampler warns about classes of one item: they are never sampled)
            return ClassSampler(items.labels, balanced[1], balanced[0], seed=seed)
        warnings.warn('train_data: fewer than two classes with two or more items fit in a batch, so batches '
                      'are shuffled items and may hold no positive pair; add items per class or raise '
                      'batch_size', RuntimeWarning, stacklevel=4)
    per_batch = max(1, batch_size // items.views_per_item)
    return ShuffleSampler(len(items), per_batch, seed=seed)  # items, not views: make_batch repeats each


def _check_positive(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise InputError(f'{name}: must be a positive number, got {value!r}')


def _make_optimizer(model, optimizer, optimizer_kwargs, learning_rate, configure_optimizer):
    if configure_optimizer is not None:
        if optimizer is not None:
            raise InputError('optimizer: give either optimizer or configure_optimizer, not both')
        result = configure_optimizer(model)
        opt, sched = result if isinstance(result, tuple) else (result, None)
        if not isinstance(opt, torch.optim.Optimizer):
            raise InputError('configure_optimizer: must return an optimizer or (optimizer, scheduler), '
                             f'got {type(result).__name__}')
        return opt, sched
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer, None
    _check_positive('learning_rate', learning_rate)  # only used here: not with configure_optimizer
    name = (optimizer or 'adam').lower()
    if name not in OPTIMIZERS:
        raise InputError(f'optimizer: unknown {optimizer!r}; use one of {sorted(OPTIMIZERS)} or an Optimizer')
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError('model: has no trainable parameters (all frozen?); unfreeze some layers')
    kwargs = dict(optimizer_kwargs or {})
    if name in ('adam', 'adamw') and not {'fused', 'foreach'} & set(kwargs) and all(
            p.is_floating_point() and p.device.type in ('cpu', 'cuda') for p in params):
        # one fused kernel over all parameters: on CPU torch otherwise loops per tensor (MiniLM: 23 vs 122 ms
        # a step); sentence-transformers' trainer uses the fused AdamW too
        kwargs['fused'] = True
    return OPTIMIZERS[name](params, lr=learning_rate, **kwargs), None


def fit(model: nn.Module = None, train_data=None, eval_data=None, *legacy_positional, loss: Union[str, nn.Module] = 'SiameseLoss',
        loss_kwargs: Optional[Dict[str, Any]] = None, epochs: int = 10, batch_size: int = 256,
        learning_rate: float = 1e-3, optimizer: Union[str, torch.optim.Optimizer, None] = None,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
        configure_optimizer: Optional[Callable] = None, scheduler_step: str = 'batch',
        device: str = 'cpu', preprocess_fn: Optional[Callable] = None, collate_fn: Optional[Callable] = None,
        num_items_per_class: Optional[int] = None, callbacks: Optional[List[Callback]] = None,
        num_workers: int = 0, seed: Optional[int] = None, gradient_accumulation_steps: int = 1,
        max_grad_norm: Optional[float] = None, mixed_precision: Optional[bool] = None,
        eval_k: int = 10, eval_distance: str = 'cosine', progress_bar: bool = True,
        resume_from=None, distributed: Union[bool, str] = 'auto', to_embedding_model: bool = False,
        input_size: Optional[Sequence[int]] = None, input_dtype: str = 'float32', layer_name: Optional[str] = None,
        freeze: Union[bool, Sequence[str]] = False, projection_head: Union[int, nn.Module, None] = None,
        scheduler: Optional[str] = None, warmup_ratio: float = 0.0, weight_decay: Optional[float] = None,
        **legacy_keywords) -> nn.Module:
    """Tune ``model`` so that items with equal labels embed close together; returns the model.

    ``train_data``/``eval_data``: docs or ``(inputs, labels)`` (see :mod:`executors.tuner.data`).
    ``loss``: a loss name (``SiameseLoss`` by default) or module, called as ``loss(emb [B, D], labels [B])``.
    ``configure_optimizer(model)`` may return an optimizer or ``(optimizer, scheduler)``; the
    scheduler steps every batch or every epoch (``scheduler_step``).
    ``num_items_per_class``: sample batches of ``batch_size // m`` classes with ``m`` items each.
    ``preprocess_fn(content) -> input`` runs per item and batch (augmentation lives here);
    ``collate_fn(list_of_inputs) -> batch`` builds the model input. When neither is given and the
    model carries an input transform (:mod:`executors.data.transforms`), batches are
    ``transform.batch(...)``, augmented for training batches only (:class:`TransformCollate`).
    ``mixed_precision``: fp16 autocast + grad scaling on CUDA (default there), bf16 autocast on CPU.
    ``scheduler``: ``'linear'``, ``'cosine'`` or ``'constant'`` after ``warmup_ratio`` of the steps
    spent in linear warm-up (see :mod:`executors.tuner.schedules`); ``weight_decay`` goes to the
    optimiser (``optimizer='adamw'``: decoupled weight decay).
    Pair losses (``MultipleNegativesRankingLoss``) get batches of distinct labels with two items
    each (``num_items_per_class=2`` unless given): no label occurs in two pairs of one batch, so
    no in-batch negative is a false one.
    ``seed``: deterministic runs on CPU. After each epoch with ``eval_data`` the validation loss
    and leave-one-out retrieval metrics at ``eval_k`` land in ``tuner.state.metrics``.
    ``resume_from``: a :class:`TrainingCheckpoint` directory to continue from.

    Tailor (as the old Finetuner): with ``to_embedding_model=True`` the model is first cut by
    :func:`executors.models.tailor.to_embedding_model` with ``layer_name``, ``freeze``, ``projection_head``,
    ``input_size`` and ``input_dtype``, and the tuned cut model is returned (``model`` is not modified).
    Without ``num_items_per_class``, class data comes in class-balanced batches
    (:func:`default_items_per_class`; data that fits in one batch is one batch), so every batch holds
    positives; a batch that still gives the loss no
    pair or triplet is counted in ``tuner.state.empty_batches`` and warned about. Inputs holding NaN or inf
    are refused (naming the item); a non-finite loss or gradient stops the run with the weights of the last
    finite update and a RuntimeWarning (``tuner.state.stopped_reason``).
    Old Finetuner arguments that are spelled differently here are refused with the spelling to use
    (:mod:`executors.legacy`).

    Multi-process training: run the script with ``torchrun --nproc_per_node=N your_script.py``
    (one process per GPU, or several on CPU); every process calls ``fit`` with the same arguments and
    data. ``distributed='auto'`` (default) turns it on when torchrun's ``WORLD_SIZE`` is above 1
    (``False``: each process trains alone). ``batch_size`` is per process: each step uses a global
    batch of ``N * batch_size`` items, split between the processes, and the model runs in
    DistributedDataParallel (gloo on CPU, nccl on CUDA with ``cuda:LOCAL_RANK`` per process). The loss
    is computed on the embeddings gathered from all processes, so negatives come from the whole global
    batch, and the gradients equal those of one process with ``batch_size = N * batch_size`` (see
    :mod:`executors.tuner.distributed`). Give a ``seed`` (or let rank 0 draw one) so all processes cut
    the same batches. Validation (``eval_data``) and :class:`EvaluationCallback` run in every process
    over all their data (same weights, so same metrics, and all processes stop together); the progress
    bar, checkpoint writers and loggers (callbacks with ``main_process_only = True``) run only on
    rank 0; other callbacks run everywhere. Every process returns the same trained (unwrapped) model;
    save it on rank 0 only (:func:`executors.tuner.distributed.is_main_process`).
    """
    from executors.legacy import check_fit_arguments
    from executors.tuner.losses import get_loss

    model = check_fit_arguments(model, legacy_positional, legacy_keywords, tuple(inspect.signature(fit).parameters))
    if train_data is None:
        raise InputError('train_data: required; pass labelled docs or (inputs, labels)')
    if not isinstance(model, nn.Module):
        raise InputError(f'model: expected a torch.nn.Module, got {type(model).__name__}')
    for name, value in (('epochs', epochs), ('batch_size', batch_size),
                        ('gradient_accumulation_steps', gradient_accumulation_steps), ('eval_k', eval_k)):
        positive_int(name, value)
    _check_positive('max_grad_norm', max_grad_norm)
    if scheduler_step not in SCHEDULER_STEPS:
        raise InputError(f'scheduler_step: must be one of {SCHEDULER_STEPS}, got {scheduler_step!r}')
    if num_workers != 0:
        raise InputError('num_workers: batches are built in the training process; use 0 '
                         '(preprocess once with the Preprocessor to make input loading cheap)')
    if seed is not None:
        seed_everything(seed)
    train_items = to_labeled_items(train_data)
    eval_items = to_labeled_items(eval_data, field='eval_data') if eval_data is not None else None
    if eval_items is not None and len(eval_items) < 2:
        raise InputError('eval_data: needs at least two items to evaluate retrieval')
    if eval_items is not None:  # eval labels numbered as in training (class-weight losses index by them)
        eval_items = align_labels(eval_items, train_items)
    tailor_arguments = {'layer_name': layer_name, 'freeze': freeze, 'projection_head': projection_head,
                        'input_size': input_size, 'input_dtype': input_dtype}
    if to_embedding_model:
        from executors.data.transforms import attach_transform
        from executors.models.tailor import to_embedding_model as cut

        transform = transform_of(model)
        model = cut(model, **tailor_arguments)
        if transform is not None and transform_of(model) is None:  # the cut model keeps the input transform
            attach_transform(model, transform)
    else:
        defaults = {'layer_name': None, 'freeze': False, 'projection_head': None, 'input_size': None,
                    'input_dtype': 'float32'}
        for name, value in tailor_arguments.items():
            if value is not defaults[name] and value != defaults[name]:
                raise InputError(f'{name}: a Tailor argument, used only with to_embedding_model=True; '
                                 'add it or drop this argument')
    if preprocess_fn is None and collate_fn is None and transform_of(model) is not None:
        # the model's own input transform; augments while the model is in train mode (training batches)
        collate_fn = TransformCollate(transform_of(model), model, np.random.default_rng(seed))
    torch_device = torch.device(device)
    use_distributed = dist_utils.resolve_distributed(distributed)
    if use_distributed:  # join torchrun's process group; on CUDA each process takes cuda:LOCAL_RANK
        torch_device = dist_utils.init_distributed(torch_device)
    loss_module = get_loss(loss, **(loss_kwargs or {})).to(torch_device)
    if hasattr(loss_module, 'reset_state'):  # state of an earlier run (class prototypes) is not this run's
        loss_module.reset_state()
    num_items_per_class, batch_size = _pair_batching(loss_module, train_items, num_items_per_class, batch_size)
    if scheduler is not None:
        check_schedule(scheduler)
        if configure_optimizer is not None:
            raise InputError('scheduler: configure_optimizer builds its own scheduler; give one or the other')
    check_warmup_ratio(warmup_ratio)
    if weight_decay is not None:
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise InputError(f'weight_decay: must be a number >= 0, got {weight_decay!r}')
        optimizer_kwargs = {**(optimizer_kwargs or {}), 'weight_decay': float(weight_decay)}
    model.to(torch_device)
    if any(p.requires_grad for p in loss_module.parameters()):
        # proxy losses learn class weights alongside the model
        model = _ModelWithLossParameters(model, loss_module)
    opt, sched = _make_optimizer(model, optimizer, optimizer_kwargs, learning_rate, configure_optimizer)
    if mixed_precision is None:
        mixed_precision = torch_device.type == 'cuda'
    all_callbacks = ([ProgressBar()] if progress_bar else []) + list(callbacks or [])
    if use_distributed and not dist_utils.is_main_process():  # bars, checkpoints, loggers: rank 0 only
        all_callbacks = [c for c in all_callbacks if not getattr(c, 'main_process_only', False)]
    tuner = Tuner(model, train_items, eval_items, loss=loss_module, optimizer=opt, scheduler=sched,
                  scheduler_step=scheduler_step, epochs=epochs, batch_size=batch_size,
                  num_items_per_class=num_items_per_class, device=torch_device, preprocess_fn=preprocess_fn,
                  collate_fn=collate_fn, callbacks=all_callbacks, seed=seed,
                  gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
                  mixed_precision=mixed_precision, eval_k=eval_k, eval_distance=eval_distance,
                  distributed=use_distributed)
    if scheduler is not None:
        steps_per_epoch = math.ceil(len(tuner.sampler) / gradient_accumulation_steps)
        total = epochs * (steps_per_epoch if scheduler_step == 'batch' else 1)
        tuner.scheduler = make_schedule(opt, scheduler, total, warmup_ratio)
    if resume_from is not None:
        from executors.tuner.checkpoint import restore_training_checkpoint

        restore_training_checkpoint(tuner, resume_from)
    tuned = tuner.run()
    return tuned.model if isinstance(tuned, _ModelWithLossParameters) else tuned


def _pair_batch_losses(loss: nn.Module, embeddings: np.ndarray, labels: np.ndarray, batch_size: int,
                       device) -> List[float]:
    """A pair loss over fixed (seed 0) batches of one pair per label drawn from ``embeddings [N, D]``."""
    from executors.tuner.samplers import ClassSampler

    per_label = loss.items_per_label
    usable = int((np.bincount(labels) >= per_label).sum())
    if usable < 2:
        return []
    size = min(batch_size - batch_size % per_label, per_label * usable) or per_label * usable
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # labels with one eval item are left out, as in training
        sampler = ClassSampler(labels, size, per_label, seed=0)
    vectors, ids = torch.from_numpy(embeddings).to(device), torch.from_numpy(labels).to(device)
    return [float(loss(vectors[batch], ids[batch])) for batch in sampler]


def _pair_batching(loss_module: nn.Module, items: LabeledItems, num_items_per_class: Optional[int],
                   batch_size: int):
    """``(num_items_per_class, batch_size)`` for the loss: a pair loss (``items_per_label = 2``) gets
    two items per label and at most one pair per label in a batch, so ``batch_size`` is capped at
    twice the number of labels that have two items (with a warning)."""
    per_label = getattr(loss_module, 'items_per_label', None)
    if per_label is None or items.kind != 'class':
        return num_items_per_class, batch_size
    name = type(loss_module).__name__
    if num_items_per_class is None:
        num_items_per_class = per_label
    elif num_items_per_class != per_label:
        raise InputError(f'num_items_per_class: {name} trains on (anchor, positive) pairs, so it needs '
                         f'num_items_per_class={per_label} (or leave it unset), got {num_items_per_class}')
    counts = np.bincount(items.labels)
    usable = int((counts >= per_label).sum())
    if usable < 2:
        raise InputError(f'train_data: {name} needs at least two labels with {per_label} items each '
                         f'(so that in-batch negatives exist), got {usable}')
    if batch_size > per_label * usable:
        warnings.warn(f'batch_size: {batch_size} is more than {per_label} x the {usable} labels with '
                      f'{per_label} items; {name} batches hold one pair per label, so batch_size is '
                      f'{per_label * usable}', stacklevel=3)
        batch_size = per_label * usable
    elif batch_size % per_label:
        raise InputError(f'batch_size: {name} batches hold pairs, so batch_size must be even, got {batch_size}')
    return num_items_per_class, batch_size


class _ModelWithLossParameters(nn.Module):
    """Wraps a model with a loss that has its own parameters (e.g. ArcFace class weights) so
    one optimiser trains both; forward is the model's."""

    def __init__(self, model: nn.Module, loss: nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x):
        return self.model(x)
