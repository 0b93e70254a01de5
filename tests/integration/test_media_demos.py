"""The image and mesh scenarios in quick mode, through the real flows: the tuned version beats the
pretrained start on every reported metric, results and plots are written."""
import json

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_mesh_scenario_quick(tmp_path):
    from executors.demos.meshes import SETTINGS, run

    result = run(tmp_path / 'results', tmp_path / 'work', quick=True)
    before, after = result['table'].values()
    assert set(before) == {f'{m}@{k}' for m in ('mAP', 'NDCG') for k in (1, 5, 10)}
    for metric in before:
        assert after[metric] > before[metric], (metric, before[metric], after[metric])
    assert result['fit_job']['version'] == 2 and result['fit_job']['parent'] == 1
    assert json.loads((tmp_path / 'results' / 'meshes-quick.json').read_text())['table'] == result['table']
    assert (tmp_path / 'results' / 'meshes-quick_neighbours.png').stat().st_size > 10_000
    log = (tmp_path / 'results' / 'meshes-quick_pretrain_log.jsonl').read_text()
    assert log.count('\n') == SETTINGS['quick']['pretrain_epochs']  # the logger callback: one row per epoch


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_scenario_quick(tmp_path):
    from executors.demos.images import run

    result = run(tmp_path / 'results', tmp_path / 'work', quick=True)
    before, after = result['table'].values()
    assert set(before) == {'hit@1', 'hit@5', 'hit@10'}
    for metric in before:
        assert after[metric] > before[metric], (metric, before[metric], after[metric])
    assert json.loads((tmp_path / 'results' / 'images-quick.json').read_text())['table'] == result['table']
    assert (tmp_path / 'results' / 'images-quick_neighbours.png').stat().st_size > 10_000
