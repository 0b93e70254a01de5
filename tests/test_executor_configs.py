"""Each executor's Hub-style config.yml loads, and one starts alone with `jina executor --uses`."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jina import Client, Executor

import executors
from executors.data.schema import Doc, DocList, Report
from executors.service.flow_process import free_port

REPO = Path(__file__).resolve().parents[1]
NAMES = {'label_assigner': 'LabelAssigner', 'preprocessor': 'Preprocessor', 'finetuner_trainer': 'FinetunerTrainer',
         'encoder': 'Encoder', 'indexer': 'Indexer', 'evaluator': 'Evaluator'}
SETTINGS = {'finetuner_trainer': {'model': {'builder': 'mlp', 'kwargs': {'layer_sizes': [3, 4]}}}}


@pytest.mark.parametrize('folder', sorted(NAMES))
def test_config_loads_the_executor(folder, tmp_path):
    uses_with = dict(SETTINGS.get(folder, {}))
    if folder in ('finetuner_trainer', 'encoder'):
        uses_with['store_dir'] = str(tmp_path / 'models')
    executor = Executor.load_config(str(REPO / 'executors' / folder / 'config.yml'), uses_with=uses_with,
                                    uses_metas={'workspace': str(tmp_path)})
    assert type(executor).__name__ == NAMES[folder]
    assert type(executor) is getattr(executors, NAMES[folder])
    assert (REPO / 'executors' / folder / 'README.md').is_file()


def test_trainer_without_model_spec_says_what_to_set(tmp_path):
    with pytest.raises(Exception, match='model: FinetunerTrainer needs the base model spec'):
        Executor.load_config(str(REPO / 'executors/finetuner_trainer/config.yml'),
                             uses_metas={'workspace': str(tmp_path)})


def test_preprocessor_endpoints_setting_is_checked():
    with pytest.raises(Exception, match='endpoints'):
        Executor.load_config(str(REPO / 'executors/preprocessor/config.yml'), uses_with={'endpoints': ['/nope']})


@pytest.mark.timeout(180)
def test_jina_executor_cli_serves_grpc(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name('jina')), 'executor', '--uses',
         str(REPO / 'executors/evaluator/config.yml'), '--port', str(port)],
        cwd=tmp_path, env={**os.environ, 'JINA_OPTOUT_TELEMETRY': '1'}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Client(port=port)
        rng = np.random.default_rng(0)
        docs = DocList[Doc]([Doc(embedding=(rng.normal(size=4) * 0.1 + np.eye(4)[i % 2]).astype(np.float32), label=str(i % 2))
                             for i in range(10)])
        deadline = time.monotonic() + 120
        while True:  # a lone executor has no gateway to ask for readiness: retry the request
            assert process.poll() is None, 'jina executor exited'
            try:
                result = client.post('/evaluate', docs, parameters={'k': 3}, return_type=DocList[Report])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert result[0].data['metrics']['precision@3'] == pytest.approx(1.0)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
