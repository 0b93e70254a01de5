"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory (written by :func:`save_training_checkpoint`, e.g. from
:class:`executors.tuner.callbacks.TrainingCheckpoint`) holds:

* ``model.safetensors``: ``tuner.model.state_dict()``;
* ``state.safetensors``: every other tensor (optimizer moments and step counts, torch RNG states, ...),
  named by where it sits, e.g. ``optimizer/state/0/exp_avg``;
* ``state.json``: the rest, with tensors replaced by references into ``state.safetensors``:
  completed ``epoch``, ``history``, ``sampler_seed``, and the ``optimizer``, ``scheduler`` and ``scaler``
  state dicts and the ``rng`` states (python ``random``, numpy's legacy global generator, torch CPU and,
  when CUDA was in use, every CUDA device).

:func:`flatten_state` / :func:`unflatten_state` do the split and its inverse for any nesting of
dicts (also with int keys, as in ``optimizer.state_dict()['state'][param_id][name]``), lists, tuples,
tensors, numpy arrays and JSON scalars (NaN/inf included).
"""
import json
import math
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from executors.errors import InputError

FORMAT_VERSION = 1
MODEL_FILE = 'model.safetensors'
TENSORS_FILE = 'state.safetensors'
STATE_FILE = 'state.json'

_TENSOR, _TUPLE, _ITEMS, _NDARRAY, _FLOAT = '__tensor__', '__tuple__', '__items__', '__ndarray__', '__float__'
_MARKERS = {_TENSOR, _TUPLE, _ITEMS, _NDARRAY, _FLOAT}


def flatten_state(obj: Any, prefix: str = '') -> Tuple[Dict[str, torch.Tensor], Any]:
    """Split ``obj`` into ``(tensors, structure)``: ``tensors`` maps unique names to CPU tensors (for
    safetensors), ``structure`` is JSON-serialisable (``allow_nan=False``) and refers to them by name.

    Encodings: tensor -> ``{"__tensor__": name}``; tuple -> ``{"__tuple__": [...]}``; dict whose keys are
    not all plain strings -> ``{"__items__": [[key, value], ...]}``; numpy array ->
    ``{"__ndarray__": nested list, "dtype": ...}``; NaN/inf -> ``{"__float__": "nan"}``.
    Anything else (functions, arbitrary objects) is an InputError naming where it sits.
    """
    tensors: Dict[str, torch.Tensor] = {}
    return tensors, _encode(obj, prefix, tensors)


def unflatten_state(tensors: Dict[str, torch.Tensor], structure: Any) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(structure, list):
        return [unflatten_state(tensors, v) for v in structure]
    if not isinstance(structure, dict):
        return structure
    if _TENSOR in structure:
        name = structure[_TENSOR]
        if name not in tensors:
            raise InputError(f'checkpoint: {TENSORS_FILE} lacks tensor {name!r}; the checkpoint is incomplete')
        return tensors[name]
    if _TUPLE in structure:
        return tuple(unflatten_state(tensors, v) for v in structure[_TUPLE])
    if _ITEMS in structure:
        return {unflatten_state(tensors, k): unflatten_state(tensors, v) for k, v in structure[_ITEMS]}
    if _NDARRAY in structure:
        return np.asarray(structure[_NDARRAY], dtype=np.dtype(structure['dtype']))
    if _FLOAT in structure:
        return float(structure[_FLOAT])
    return {k: unflatten_state(tensors, v) for k, v in structure.items()}


def _encode(obj: Any, path: str, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = path or 'tensor'
        while name in tensors:
            name += '_'
        # clone: safetensors refuses tensors sharing storage, and the checkpoint must not alias live state
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {_TENSOR: name}
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: obj.tolist(), 'dtype': obj.dtype.str}
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f'{path}/{i}', tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f'{path}/{i}', tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: _encode(v, f'{path}/{k}', tensors) for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, f'{path}/key{i}', tensors), _encode(v, f'{path}/{k}', tensors)]
                         for i, (k, v) in enumerate(obj.items())]}
    raise InputError(f'{path.lstrip("/") or "state"}: a {type(obj).__name__} cannot be saved without pickle; '
                     'use an optimizer/scheduler whose state_dict holds only tensors, numbers, strings and '
                     'containers of them')


def _rng_states() -> Dict[str, Any]:
    states = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state(),
              'cuda': None}
    # only when CUDA was used: reading the state would otherwise start a CUDA context for a CPU fit
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if states.get('cuda') is not None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states['cuda'][:torch.cuda.device_count()])
        else:
            warnings.warn('resume_from: the checkpoint holds CUDA RNG states but CUDA is not available; '
                          'they are not restored', stacklevel=3)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing what was there."""
    old = final.with_name(final.name + '.old')
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_training_checkpoint(tuner, path) -> Path:
    """Write a resumable checkpoint of ``tuner`` (see module doc) to directory ``path``, replacing it.

    Call it at the end of an epoch (``on_epoch_end``): it records ``tuner.state.epoch + 1`` completed
    epochs. The directory is written under a temporary name and renamed, so ``path`` is either the old
    or the complete new checkpoint.
    """
    path = Path(path)
    state = {
        'format': FORMAT_VERSION,
        'epoch': tuner.state.epoch + 1,
        'history': tuner.state.history,
        'sampler_seed': getattr(tuner.sampler, 'seed', None),
        'optimizer': tuner.optimizer.state_dict(),
        'scheduler': tuner.scheduler.state_dict() if tuner.scheduler is not None else None,
        'scaler': tuner.scaler.state_dict() if tuner.scaler is not None else None,
        'rng': _rng_states(),
    }
    tensors, structure = flatten_state(state)
    model_state = {k: v.detach().cpu().clone().contiguous() for k, v in tuner.model.state_dict().items()}
    tmp = path.with_name(path.name + '.tmp')
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(model_state, str(tmp / MODEL_FILE))
    save_file(tensors, str(tmp / TENSORS_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(structure, allow_nan=False))
    replace_dir(tmp, path)
    return path


def read_training_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(model_state_dict, state)`` of the checkpoint directory ``path`` (tensors on CPU)."""
    path = Path(path)
    missing = [f for f in (MODEL_FILE, TENSORS_FILE, STATE_FILE) if not (path / f).is_file()]
    if missing:
        raise InputError(f'resume_from: {str(path)!r} is not a training checkpoint (missing {missing}); '
                         'pass an epoch-<n> directory written by TrainingCheckpoint')
    state = unflatten_state(load_file(str(path / TENSORS_FILE)), json.loads((path / STATE_FILE).read_text()))
    if state.get('format') != FORMAT_VERSION:
        raise InputError(f'resume_from: checkpoint format {state.get("format")!r} is not supported '
                         f'(expected {FORMAT_VERSION})')
    return load_file(str(path / MODEL_FILE)), state


def restore_training_checkpoint(tuner, path) -> None:
    """Load the checkpoint at ``path`` into ``tuner`` (built by ``fit`` with the same model, optimizer,
    scheduler and data) so that ``tuner.run()`` continues with the next epoch exactly as the original
    run would have: model, optimizer, scheduler, grad scaler, RNG states, ``state.history`` and the
    sampler seed are restored and ``tuner.start_epoch`` is set to the number of completed epochs.
    """
    model_state, state = read_training_checkpoint(path)
    try:
        tuner.model.load_state_dict(model_state)
    except RuntimeError as e:
        raise InputError(f'resume_from: the checkpoint does not fit the model ({e}); '
                         'resume with the model architecture it was saved from') from e
    try:
        tuner.optimizer.load_state_dict(state['optimizer'])
    except (ValueError, KeyError) as e:
        raise InputError(f'resume_from: the optimizer state does not fit this optimizer ({e}); '
                         'resume with the same optimizer and parameters') from e
    if (state['scheduler'] is None) != (tuner.scheduler is None):
        has = 'has' if state['scheduler'] is not None else 'has no'
        raise InputError(f'resume_from: the checkpoint {has} scheduler state, unlike this fit; '
                         'pass the same configure_optimizer as the run that wrote it')
    if tuner.scheduler is not None:
        tuner.scheduler.load_state_dict(state['scheduler'])
    if tuner.scaler is not None and state['scaler'] is not None:
        tuner.scaler.load_state_dict(state['scaler'])
    elif (tuner.scaler is None) != (state['scaler'] is None):
        warnings.warn('resume_from: grad-scaler state present on only one side (mixed precision on CUDA '
                      'differs from the saved run); the scaler starts fresh', stacklevel=2)
    if state.get('sampler_seed') is not None and hasattr(tuner.sampler, 'seed'):
        tuner.sampler.seed = int(state['sampler_seed'])
    _set_rng_states(state['rng'])
    tuner.state.history = list(state['history'])
    tuner.start_epoch = int(state['epoch'])
