"""The training loop behind :func:`fit` (embedding inference is :mod:`executors.models.inference`).

``fit`` tunes any ``torch.nn.Module`` mapping a batch of inputs to embeddings ``[B, D]``
with a metric-learning loss ``loss(embeddings [B, D], labels [B]) -> scalar``.
"""
import contextlib
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from executors.data.transforms import TransformCollate, transform_of
from executors.models.inference import to_device
from executors.errors import InputError, positive_int
from executors.tuner import distributed as dist_utils
from executors.tuner.callbacks import Callback, ProgressBar
from executors.tuner.data import LabeledItems, make_batch, to_labeled_items
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
                _make_sampler(train_items, global_batch_size, num_items_per_class, dist_utils.shared_seed(seed)))
            # only the training forward goes through DDP; self.model stays unwrapped for validation,
            # callbacks and checkpoints (same state-dict keys as a single-process run)
            self.train_model = dist_utils.wrap_model(model, device)
        else:
            self.sampler = _make_sampler(train_items, batch_size, num_items_per_class, seed)
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
        self.optimizer.zero_grad(set_to_none=True)
        for state.batch_index, indices in enumerate(self.sampler):
            self._hook('on_train_batch_begin')
            loss = self._forward_loss(indices)
            window_start = state.batch_index - state.batch_index % self.gradient_accumulation_steps
            window = min(self.gradient_accumulation_steps, state.num_batches - window_start)
            scaled = loss / window  # the mean over the batches of this (possibly shorter, last) window
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            last = state.batch_index + 1 == state.num_batches
            if (state.batch_index + 1) % self.gradient_accumulation_steps == 0 or last:
                self._optimizer_step()
            state.current_loss = float(loss.detach())
            losses.append(state.current_loss)
            self._hook('on_train_batch_end')
        if self.scheduler is not None and self.scheduler_step == 'epoch':
            self.scheduler.step()
        state.train_loss = float(np.mean(losses)) if losses else math.nan
        self._hook('on_train_epoch_end')

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
        n = len(self.eval_items)
        pair_loss = getattr(self.loss, 'items_per_label', None) is not None and self.eval_items.kind == 'class'
        losses, embeddings = [], []
        for start in range(0, n, self.batch_size):
            self._hook('on_val_batch_begin')
            indices = list(range(start, min(n, start + self.batch_size)))
            inputs, labels = make_batch(self.eval_items, indices, self.preprocess_fn, self.collate_fn)
            with self._autocast():
                batch_embeddings = self.model(to_device(inputs, self.device)).float()
            if not pair_loss:
                losses.append(float(self.loss(batch_embeddings, labels.to(self.device))))
            embeddings.append(batch_embeddings.cpu().numpy())
            self._hook('on_val_batch_end')
        if pair_loss:  # consecutive chunks are not pairs: score the loss on pair batches of the embeddings
            losses = _pair_batch_losses(self.loss, np.concatenate(embeddings), self.eval_items.labels,
                                        self.batch_size, self.device)
        state.val_loss = float(np.mean(losses)) if len(losses) else math.nan
        labels = np.repeat(self.eval_items.labels, self.eval_items.views_per_item)  # one per embedding row
        k = min(self.eval_k, n - 1)
        state.metrics.update(evaluate_embeddings(np.concatenate(embeddings), labels, k=k,
                                                 distance=self.eval_distance))
        state.metrics['val_loss'] = state.val_loss
        self._hook('on_val_end')

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


def _make_sampler(items: LabeledItems, batch_size: int, num_items_per_class: Optional[int], seed):
    from executors.tuner.samplers import ClassSampler, SessionSampler, ShuffleSampler

    if items.sessions is not None:
        if num_items_per_class is not None:
            raise InputError('num_items_per_class: applies to class data; session data is batched by whole sessions')
        return SessionSampler(items.sessions, batch_size, seed=seed)
    if num_items_per_class is not None:
        if items.views_per_item > 1:
            raise InputError('num_items_per_class: applies to labelled data only, not to unlabelled instance data')
        return ClassSampler(items.labels, batch_size, num_items_per_class, seed=seed)
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
    return OPTIMIZERS[name](params, lr=learning_rate, **(optimizer_kwargs or {})), None


def fit(model: nn.Module, train_data, eval_data=None, *, loss: Union[str, nn.Module] = 'SiameseLoss',
        loss_kwargs: Optional[Dict[str, Any]] = None, epochs: int = 10, batch_size: int = 256,
        learning_rate: float = 1e-3, optimizer: Union[str, torch.optim.Optimizer, None] = None,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
        configure_optimizer: Optional[Callable] = None, scheduler_step: str = 'batch',
        device: str = 'cpu', preprocess_fn: Optional[Callable] = None, collate_fn: Optional[Callable] = None,
        num_items_per_class: Optional[int] = None, callbacks: Optional[List[Callback]] = None,
        num_workers: int = 0, seed: Optional[int] = None, gradient_accumulation_steps: int = 1,
        max_grad_norm: Optional[float] = None, mixed_precision: Optional[bool] = None,
        eval_k: int = 10, eval_distance: str = 'cosine', progress_bar: bool = True,
        resume_from=None, distributed: Union[bool, str] = 'auto', scheduler: Optional[str] = None,
        warmup_ratio: float = 0.0, weight_decay: Optional[float] = None) -> nn.Module:
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
    from executors.tuner.losses import get_loss

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
    if preprocess_fn is None and collate_fn is None and transform_of(model) is not None:
        # the model's own input transform; augments while the model is in train mode (training batches)
        collate_fn = TransformCollate(transform_of(model), model, np.random.default_rng(seed))
    train_items = to_labeled_items(train_data)
    eval_items = to_labeled_items(eval_data, field='eval_data') if eval_data is not None else None
    if eval_items is not None and len(eval_items) < 2:
        raise InputError('eval_data: needs at least two items to evaluate retrieval')
    torch_device = torch.device(device)
    use_distributed = dist_utils.resolve_distributed(distributed)
    if use_distributed:  # join torchrun's process group; on CUDA each process takes cuda:LOCAL_RANK
        torch_device = dist_utils.init_distributed(torch_device)
    loss_module = get_loss(loss, **(loss_kwargs or {})).to(torch_device)
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
