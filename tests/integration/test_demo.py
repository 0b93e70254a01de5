"""`make demo`'s scenario meets the issue's bar: on held-out queries the tuned MLP's label
purity@100 is at least 0.9 and at least 1.5 times that of the original 3-D space."""
import json

import pytest

from executors.demos.swiss_roll import run


@pytest.mark.timeout(600)
def test_swiss_roll_demo_end_to_end(tmp_path):
    result = run(tmp_path / 'results', tmp_path / 'work')
    spaces = result['spaces']
    original = spaces['original 3-D (euclidean)']['label_purity@100']
    tuned = next(v for k, v in spaces.items() if k.startswith('tuned MLP'))['label_purity@100']
    random_init = spaces['random MLP (v1)']['label_purity@100']
    assert tuned >= 0.9 and tuned >= 1.5 * original and tuned > random_init
    assert result['fit']['version'] == 2 and result['fit']['parent'] == 1
    assert json.loads((tmp_path / 'results' / 'demo.json').read_text())['spaces'] == spaces
    for png in ('demo_neighbours.png', 'demo_loss.png'):
        assert (tmp_path / 'results' / png).stat().st_size > 10_000
