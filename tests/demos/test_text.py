"""The text scenario's quick mode end to end: CLINC150 subset, fine-tune, heads, table, PNG, cache."""
import json

import pytest

from executors.demos import text


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('text-demo')
    result = text.run(root / 'results', root / 'cache', quick=True, seed=0)
    return root, result


def test_quick_run_writes_table_and_plot_and_tuning_helps(quick_run):
    root, result = quick_run
    written = json.loads((root / 'results' / 'text_quick.json').read_text())
    assert written['spaces'] == result['spaces']
    assert set(result['spaces']) == {'pretrained MiniLM', text.FINE_TUNED, 'FeedForwardTuner on frozen MiniLM',
                                     'ContrastiveTuner on frozen MiniLM'}
    assert result['num_intents'] == text.QUICK['intents']
    assert result['num_index'] == text.QUICK['intents'] * text.QUICK['train_per_intent']
    for metrics in result['spaces'].values():
        assert set(metrics) == {'hit@1', 'hit@10', 'mAP@10', 'NDCG@10'}
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
    pretrained, tuned = result['spaces']['pretrained MiniLM'], result['spaces'][text.FINE_TUNED]
    assert tuned['mAP@10'] > pretrained['mAP@10'] and tuned['NDCG@10'] > pretrained['NDCG@10']
    assert (root / 'results' / 'text_quick.png').stat().st_size > 10_000
    assert result['fine_tune'] == text.FINE_TUNE


def test_cached_stages_are_reused_and_a_new_setting_fits_again(quick_run, monkeypatch):
    root, result = quick_run
    again = text.run(root / 'results', root / 'cache', quick=True, seed=0)
    assert again['spaces'][text.FINE_TUNED] == result['spaces'][text.FINE_TUNED]
    assert 'fine-tune (s)' in again['timings']  # from the stored version
    assert not [key for key in again['timings'] if key.startswith('embed ')]  # every space came from the cache
    assert len(list((root / 'cache').glob('models-*'))) == 1
    monkeypatch.setattr(text, 'FINE_TUNE', {**text.FINE_TUNE, 'loss_kwargs': {}})  # plain MNRL
    plain = text.run(root / 'results', root / 'cache', quick=True, seed=0)
    assert len(list((root / 'cache').glob('models-*'))) == 2
    assert plain['spaces'][text.FINE_TUNED] != result['spaces'][text.FINE_TUNED]
