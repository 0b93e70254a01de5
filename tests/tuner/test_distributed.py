"""Multi-process training (:mod:`executors.tuner.distributed`): the helpers in one process, and a real
2-process ``torchrun`` fit on CPU (gloo) compared with one process on the doubled batch."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from executors.errors import InputError
from executors.models import load
from executors.tuner import distributed as dist_utils
from executors.tuner.callbacks import (
    BestModelCheckpoint,
    Callback,
    EarlyStopping,
    EvaluationCallback,
    MetricsLogger,
    ProgressBar,
    TensorBoardLogger,
    TrainingCheckpoint,
    WandBLogger,
)
from executors.tuner.distributed import DistributedBatchSampler, gather_batch
from executors.tuner.samplers import ClassSampler, SessionSampler, ShuffleSampler

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- single process, no torchrun


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize('world_size', [1, 2, 3, 4])
@pytest.mark.parametrize('make_sampler', [
    lambda: ShuffleSampler(50, 12, seed=3),
    lambda: ShuffleSampler(49, 16, seed=3, drop_last=True),
    lambda: ClassSampler(np.repeat(np.arange(6), 7), 12, 3, seed=1),
    lambda: SessionSampler(np.repeat(np.arange(10), [3, 1, 4, 2, 5, 2, 3, 1, 2, 4]), 8, seed=2),
])
def test_sharded_slices_concatenate_to_the_global_batch(make_sampler, world_size):
    global_sampler = make_sampler()
    shards = [DistributedBatchSampler(make_sampler(), rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in (0, 1, 5):
        global_sampler.set_epoch(epoch)
        for shard in shards:
            shard.set_epoch(epoch)
        expected = [batch for batch in global_sampler if len(batch) >= world_size]
        per_rank = [list(shard) for shard in shards]
        assert all(len(batches) == len(shard) == len(expected) for batches, shard in zip(per_rank, shards))
        for step, batch in enumerate(expected):
            slices = [batches[step] for batches in per_rank]
            assert sum(slices, []) == batch  # contiguous, in rank order
            assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced, none empty
            assert min(map(len, slices)) >= 1


def test_sharding_equal_slices_of_a_global_batch_and_skips_a_last_batch_smaller_than_world():
    # 33 items, global batch 32 (16 per process): 16 + 16, then a last batch of 1 item that no 2-way split fits
    shards = [DistributedBatchSampler(ShuffleSampler(33, 32, seed=0), rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in shards] == [1, 1]
    assert [[len(b) for b in s] for s in shards] == [[16], [16]]
    assert len(DistributedBatchSampler(ShuffleSampler(34, 32, seed=0), rank=1, world_size=2)) == 2


def test_sharding_forwards_seed_and_checks_rank():
    shard = DistributedBatchSampler(ShuffleSampler(10, 4, seed=5), rank=0, world_size=2)
    assert shard.seed == 5
    shard.seed = 7  # what restoring a training checkpoint does
    assert shard.batch_sampler.seed == 7
    with pytest.raises(InputError, match='rank'):
        DistributedBatchSampler(ShuffleSampler(10, 4, seed=5), rank=2, world_size=2)


def test_single_process_helpers_are_identity(no_torchrun):
    embeddings = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1])
    gathered, gathered_labels = gather_batch(embeddings, labels)
    assert gathered is embeddings and gathered_labels is labels
    gathered.pow(2).sum().backward()
    assert torch.allclose(embeddings.grad, 2 * embeddings.detach())
    assert dist_utils.get_world_size() == 1 and dist_utils.get_rank() == 0 and dist_utils.is_main_process()
    assert dist_utils.torchrun_env() is None
    assert dist_utils.resolve_distributed('auto') is False
    assert dist_utils.resolve_distributed(False) is False
    with pytest.raises(InputError, match='torchrun'):
        dist_utils.resolve_distributed(True)
    with pytest.raises(InputError, match='distributed'):
        dist_utils.resolve_distributed('yes')
    assert dist_utils.shared_seed(11) == 11 and isinstance(dist_utils.shared_seed(None), int)
    assert dist_utils.any_process(True) is True and dist_utils.any_process(False) is False
    shard = DistributedBatchSampler(ShuffleSampler(10, 4, seed=1))  # rank / world size from the (absent) env
    assert (shard.rank, shard.world_size) == (0, 1)
    assert list(shard) == list(ShuffleSampler(10, 4, seed=1))


def test_torchrun_env_is_read(monkeypatch):
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setenv('LOCAL_RANK', '1')
    assert dist_utils.torchrun_env() == dist_utils.TorchrunEnv(rank=3, world_size=4, local_rank=1)
    assert (dist_utils.get_rank(), dist_utils.get_world_size(), dist_utils.is_main_process()) == (3, 4, False)
    assert dist_utils.resolve_distributed('auto') is True
    monkeypatch.setenv('WORLD_SIZE', '1')
    assert dist_utils.resolve_distributed('auto') is False


def test_writers_and_progress_bar_run_on_the_main_process_only():
    assert ProgressBar.main_process_only and BestModelCheckpoint.main_process_only
    assert TrainingCheckpoint.main_process_only and MetricsLogger.main_process_only
    assert WandBLogger.main_process_only and TensorBoardLogger.main_process_only
    assert not Callback.main_process_only and not EarlyStopping.main_process_only
    assert not EvaluationCallback.main_process_only


def test_gather_batch_with_a_one_process_group(no_torchrun, tmp_path):
    """A real (gloo, world size 1) process group: still the identity, gradient included."""
    import torch.distributed as dist

    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        embeddings = torch.randn(4, 2, requires_grad=True)
        labels = torch.tensor([1, 1, 0, 0])
        gathered, gathered_labels = gather_batch(embeddings, labels)
        assert torch.equal(gathered, embeddings) and torch.equal(gathered_labels, labels)
        assert dist_utils.resolve_distributed('auto') is False and dist_utils.resolve_distributed(True) is True
        assert dist_utils.init_distributed('cpu') == torch.device('cpu')  # uses the existing group
    finally:
        dist_utils.cleanup()
    assert not dist_utils.is_initialized()


# ---------------------------------------------------------------- torchrun: 2 processes vs 1 process

SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import torch
    from executors.models import build_model, save
    from executors.tuner import distributed as dist_utils
    from executors.tuner.callbacks import Callback
    from executors.tuner.trainer import fit

    out, batch_size, loss = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)

    class Record(Callback):
        def __init__(self):
            self.epochs, self.batches, self.sizes = [], [], []
        def on_train_batch_end(self, tuner):
            self.batches.append(tuner.state.current_loss)
        def on_train_epoch_end(self, tuner):
            self.epochs.append(tuner.state.train_loss)
            self.sizes.append(tuner.state.num_batches)

    rng = np.random.default_rng(0)  # 6 gaussian blobs in 8-d, 16 items each: 96 items = 3 global batches of 32
    centres = rng.normal(0, 1.5, (6, 8))
    y = np.repeat(np.arange(6), 16)
    x = (centres[y] + rng.normal(0, 1, (len(y), 8))).astype(np.float32)
    model = build_model({'builder': 'mlp', 'kwargs': {'layer_sizes': [8, 32, 8]}}, seed=0)
    loss_kwargs = {'num_classes': 6, 'embedding_dim': 8, 'scale': 8.0} if loss == 'ArcFaceLoss' else None
    record = Record()
    rank = dist_utils.get_rank()
    print(f'rank {rank}: fit starts', file=sys.stderr, flush=True)
    tuned = fit(model, (x, y), loss=loss, loss_kwargs=loss_kwargs, epochs=6, batch_size=batch_size,
                learning_rate=1e-2, seed=0, progress_bar=False, callbacks=[record])
    print(f'rank {rank}: fit done', file=sys.stderr, flush=True)
    assert not isinstance(tuned, torch.nn.parallel.DistributedDataParallel)
    if dist_utils.is_initialized():  # the helpers in a real 2-process group
        world = dist_utils.get_world_size()
        state = torch.cat([p.detach().flatten() for p in tuned.parameters()])
        states = [torch.empty_like(state) for _ in range(world)]
        torch.distributed.all_gather(states, state)
        assert all(torch.equal(s, state) for s in states), 'ranks ended with different weights'
        seeds = [None] * world
        torch.distributed.all_gather_object(seeds, dist_utils.shared_seed(None))
        assert len(set(seeds)) == 1, seeds
        assert dist_utils.any_process(rank == 1) and not dist_utils.any_process(False)
        # uneven rows (rank r holds r + 1), gathered in rank order; gradient summed over ranks
        rows = torch.full((rank + 1, 2), float(rank), requires_grad=True)
        gathered, labels = dist_utils.gather_batch(rows, torch.full((rank + 1,), rank))
        assert labels.tolist() == sum([[r] * (r + 1) for r in range(world)], [])
        assert gathered[:, 0].tolist() == [float(r) for r in labels.tolist()]
        (gathered.sum() * (rank + 1)).backward()  # rank k's loss weighs every row by k + 1
        assert rows.grad.eq(sum(range(1, world + 1))).all(), rows.grad
    if dist_utils.is_main_process():
        save(tuned, out + '/model')
        with open(out + '/losses.json', 'w') as f:
            json.dump({'world_size': dist_utils.get_world_size(), 'epochs': record.epochs,
                       'batches': record.batches, 'num_batches': record.sizes}, f)
    dist_utils.cleanup()
    print(f'rank {rank}: done', file=sys.stderr, flush=True)
''')


def _run(args, out: Path):
    # faulthandler: a worker killed by a signal prints where it was
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONFAULTHANDLER': '1', 'PYTHONPATH': os.pathsep.join(
        [str(REPO), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)}
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(name, None)
    out.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        # seen twice early on, never reproduced since: a worker aborting at start-up in C++ ("terminate
        # called without an active exception") before any training; one retry, the assertions stay as they are
        if result.returncode == 0 or 'terminate called without an active exception' not in result.stderr:
            break
    assert result.returncode == 0, f'{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-8000:]}'
    return json.loads((out / 'losses.json').read_text()), load(out / 'model')[0]


@pytest.mark.parametrize('loss', ['SiameseLoss', 'ArcFaceLoss'])
def test_two_torchrun_processes_match_one_process_with_the_doubled_batch(tmp_path, loss):
    torchrun = Path(sys.executable).with_name('torchrun')
    if not torchrun.exists():
        pytest.skip('torchrun is not installed next to the Python interpreter')
    script = tmp_path / 'train.py'
    script.write_text(SCRIPT)
    two, two_model = _run([str(torchrun), '--standalone', '--nproc_per_node=2', str(script),
                           str(tmp_path / 'two'), '16', loss], tmp_path / 'two')
    one, one_model = _run([sys.executable, str(script), str(tmp_path / 'one'), '32', loss], tmp_path / 'one')

    assert (two['world_size'], one['world_size']) == (2, 1)
    assert two['num_batches'] == one['num_batches'] == [3] * 6  # the same global batches
    for run in (one, two):
        assert run['epochs'][-1] < 0.8 * run['epochs'][0], run['epochs']  # it trained
    # same global batches, same global loss and gradient: the curves agree up to float rounding (two
    # forwards of 16 rows vs one of 32, gradients summed in another order); measured: ~1e-7 relative
    np.testing.assert_allclose(two['batches'], one['batches'], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(two['epochs'], one['epochs'], rtol=1e-5, atol=1e-7)
    for p_two, p_one in zip(two_model.parameters(), one_model.parameters()):
        torch.testing.assert_close(p_two, p_one, rtol=1e-5, atol=1e-5)
