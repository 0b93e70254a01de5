import numpy as np
import pytest
import torch

from executors.data.document_store import StoredDoc
from executors.errors import InputError
from executors.models import ModelStore
from executors.tuner.service import TrainingService, stratified_split

MLP = {'builder': 'mlp', 'kwargs': {'layer_sizes': [2, 16, 8]}}


def _blobs(n_per_class=30, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4, size=(classes, 2))
    return [StoredDoc(id=f'{c}-{i}', label=str(c), tensor=(centres[c] + rng.normal(size=2)).astype(np.float32))
            for c in range(classes) for i in range(n_per_class)]


@pytest.fixture
def service(tmp_path):
    return TrainingService(ModelStore(tmp_path / 'models'), 'm', MLP, tmp_path / 'ws',
                           fit_defaults={'epochs': 5, 'batch_size': 32, 'learning_rate': 0.01})


def test_initial_version_is_published_once(tmp_path, service):
    assert service.store.versions('m') == [1] and service.store.config('m')['stage'] == 'initial'
    TrainingService(ModelStore(tmp_path / 'models'), 'm', MLP, tmp_path / 'ws')
    assert service.store.versions('m') == [1]


def test_fit_publishes_a_tuned_version_with_metrics_and_plot(service):
    service.add(_blobs())
    status = service.start_fit({}, wait=True)
    job = status['job']
    assert job['state'] == 'done', job.get('error')
    assert job['version'] == 2 and job['parent'] == 1 and status['current_version'] == 2
    config = service.store.config('m', 2)
    assert config['stage'] == 'tuned' and config['num_eval'] == 18 and config['num_train'] == 72
    assert len(config['history']) == 5 and 'val_loss' in config['history'][0]
    assert set(config['metrics_after']) >= {'mAP@10', 'precision@10', 'NDCG@10'}
    assert len(config['training_data_digest']) == 64
    assert (service.store.resolve('m', 2).path / 'loss.png').stat().st_size > 1000
    # a second fit continues from version 2
    assert service.start_fit({'epochs': 1}, wait=True)['job']['parent'] == 2


def test_bad_training_data_is_refused_and_nothing_is_lost(service):
    service.add(_blobs(5))
    with pytest.raises(InputError, match='label'):
        service.add([StoredDoc(id='x', tensor=np.zeros(2, np.float32))])
    with pytest.raises(InputError, match='no tensor or text'):
        service.add([StoredDoc(id='y', label='1')])
    assert service.data.count() == 15
    with pytest.raises(InputError, match='eval_fraction'):
        service.start_fit({'eval_fraction': 1.5})
    service.clear()
    with pytest.raises(InputError, match='no training docs'):
        service.start_fit({})
    service.add([StoredDoc(id=f'{i}', label='only', tensor=np.ones(2, np.float32) * i) for i in range(6)])
    with pytest.raises(InputError, match='1 class'):
        service.start_fit({})
    assert service.status()['job']['state'] == 'idle'


def test_failed_fit_is_reported_in_status(service):
    service.add(_blobs(4))
    with pytest.raises(InputError, match='NoSuchLoss'):
        service.start_fit({'loss': 'NoSuchLoss'})
    status = service.start_fit({'num_items_per_class': 7}, wait=True)  # fails inside the fit
    assert status['job']['state'] == 'failed' and 'num_items_per_class' in status['job']['error']
    assert status['current_version'] == 1


def test_stratified_split_holds_out_each_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    train, held_out = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, held_out]).tolist()) == list(range(17))
    assert np.bincount(labels[held_out], minlength=3).tolist() == [2, 2, 0]


def test_a_worse_fit_is_published_but_not_promoted(service):
    service.add(_blobs())
    good = service.start_fit({'epochs': 5}, wait=True)['job']
    assert good['state'] == 'done' and good['promotion']['promoted'], good
    assert service.store.current_version('m') == good['version']
    bad = service.start_fit({'epochs': 1, 'learning_rate': 1e-9, 'from_scratch': True},  # an untrained model
                            wait=True)['job']
    assert bad['state'] == 'done', bad.get('error')
    promotion = bad['promotion']
    assert not promotion['promoted'] and promotion['compared_with'] == good['version']
    assert promotion['candidate'] < promotion['serving'] == good['metrics_after']['mAP@10']  # same held-out set
    assert promotion['reason'] == (f"mAP@10 {promotion['candidate']:.4f} < {promotion['serving']:.4f} of version "
                                   f"{good['version']} + 0 on the held-out set; the version is kept in the store "
                                   'but not promoted')
    assert service.store.versions('m')[-1] == bad['version']  # kept in the store ...
    assert service.store.current_version('m') == good['version']  # ... not promoted
    assert service.store.config('m', bad['version'])['promotion'] == promotion


def test_promotion_gate_settings_are_checked(tmp_path):
    with pytest.raises(InputError, match='promotion.min_delta: expected a finite number, got nan'):
        TrainingService(ModelStore(tmp_path / 'models'), 'm', MLP, tmp_path / 'ws', promotion={'min_delta': float('nan')})


def test_versions_carry_the_base_models_input_transform(tmp_path):
    spec = {'modality': 'vector', 'dim': 2, 'mean': [1.0, -1.0], 'std': 4.0}
    service = TrainingService(ModelStore(tmp_path / 'models'), 'm', MLP, tmp_path / 'ws', input_transform=spec,
                              fit_defaults={'epochs': 2, 'batch_size': 32})
    assert service.store.config('m', 1)['input_transform'] == spec
    service.add(_blobs())
    assert service.start_fit({}, wait=True)['job']['state'] == 'done'
    assert service.store.config('m', 2)['input_transform'] == spec  # inherited from the parent version
    tuned, _ = service.store.load('m', 2)
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    vectors, version = service.embed(list(x), 2)
    with torch.no_grad():
        expected = tuned(torch.from_numpy((x - np.array([1.0, -1.0], np.float32)) / 4.0)).numpy()
    assert version == 2 and np.allclose(vectors, expected, atol=1e-6)
    with pytest.raises(InputError, match="modality: unknown modality 'sound'"):
        TrainingService(ModelStore(tmp_path / 'other'), 'm', MLP, tmp_path / 'ws2', input_transform={'modality': 'sound'})


def test_fit_with_a_miner_and_a_multistep_schedule_logs_every_epoch(service):
    """The flow's /fit options name a miner and a scheduler as JSON: the learning rate follows MultiStepLR
    (x0.1 after epoch 2 of 3) and fit_log.jsonl gets one row per epoch."""
    import json

    from executors.tuner.service import _loss_of, _optimizer_of

    service.add(_blobs())
    options = {'epochs': 3, 'loss': 'TripletLoss', 'loss_kwargs': {'margin': 0.3},
               'miner': {'name': 'TripletEasyHardMiner', 'pos_strategy': 'easy', 'neg_strategy': 'semihard'},
               'lr_scheduler': {'name': 'MultiStepLR', 'milestones': [2], 'gamma': 0.1}}
    job = service.start_fit(options, wait=True)['job']
    assert job['state'] == 'done', job.get('error')
    rows = [json.loads(line) for line in (service.workspace / 'fit_log.jsonl').read_text().splitlines()]
    assert [row['epoch'] for row in rows] == [1, 2, 3]
    loss = _loss_of({**service.fit_defaults, **options})
    assert type(loss.miner).__name__ == 'TripletEasyHardMiner' and loss.miner.neg_strategy == 'semihard'
    configure = _optimizer_of({**service.fit_defaults, **options})
    optimizer, scheduler = configure(torch.nn.Linear(2, 2))
    learning_rates = []
    for _ in range(3):
        learning_rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    assert learning_rates == pytest.approx([0.01, 0.01, 0.001])


def test_default_loss_kwargs_go_with_the_default_loss_only(tmp_path):
    """The text flow's defaults give MNRL class prototypes; a /fit naming another loss must not hand that loss
    MNRL's keywords (it would be refused), and one keeping the default loss gets them."""
    from executors.tuner.service import _loss_of

    service = TrainingService(ModelStore(tmp_path / 'models'), 'm', MLP, tmp_path / 'ws',
                              fit_defaults={'epochs': 1, 'batch_size': 16, 'loss': 'MultipleNegativesRankingLoss',
                                            'loss_kwargs': {'prototype_weight': 1.0}})
    service.add(_blobs())
    job = service.start_fit({'loss': 'SiameseLoss'}, wait=True)['job']
    assert job['state'] == 'done', job.get('error')
    job = service.start_fit({'epochs': 1}, wait=True)['job']
    assert job['state'] == 'done', job.get('error')
    assert _loss_of({**service.fit_defaults}).prototype_weight == 1.0
    with pytest.raises(InputError, match='prototype_weight'):  # given explicitly, they are the caller's
        service.start_fit({'loss': 'SiameseLoss', 'loss_kwargs': {'prototype_weight': 1.0}})


@pytest.mark.parametrize('options, message', [
    ({'miner': {'name': 'NoSuchMiner'}}, 'parameters.miner: expected'),
    ({'miner': {'name': 'TripletEasyHardMiner', 'pos_strategy': 'hardest'}}, 'pos_strategy'),
    ({'lr_scheduler': {'name': 'LambdaLR'}}, 'parameters.lr_scheduler: expected'),
    ({'lr_scheduler': {'name': 'MultiStepLR', 'steps': [2]}}, 'parameters.lr_scheduler: bad settings for MultiStepLR'),
    ({'loss': 'MultipleNegativesRankingLoss', 'loss_kwargs': {'prototype_momentum': 1.5}}, 'prototype_momentum: must be'),
    ({'loss': 'MultipleNegativesRankingLoss', 'loss_kwargs': {'prototype_weight': 'high'}}, 'prototype_weight: expected'),
    ({'loss': 'MultipleNegativesRankingLoss', 'loss_kwargs': {'prototype_margin': -1}}, 'prototype_margin: must be'),
    ({'loss': 'MultipleNegativesRankingLoss', 'loss_kwargs': {'symmetric': 'true'}}, 'symmetric: expected'),
])
def test_bad_miner_or_scheduler_is_refused_before_fitting(service, options, message):
    service.add(_blobs(5))
    with pytest.raises(InputError, match=message):
        service.start_fit(options)
    assert service.job['state'] == 'idle'
