"""The LabelAssigner's fitted numeric bins survive a SIGKILL of the training flow: after a restart
from the same directory, new docs get the labels of the bins fitted on the first /train request,
not of bins refitted on the new request. Flow: ``jina flow --uses flows/train.yml``, free ports."""
import os
import signal

import numpy as np
import pytest
from jina import Client
from sklearn.datasets import make_swiss_roll

from executors.data.document_store import DocumentStore
from executors.data.labels import assign_labels, build_rule
from executors.data.schema import Doc, DocList
from executors.service.flow_process import FlowProcess
from tests.integration.search_helpers import REPO

pytestmark = pytest.mark.timeout(600)

RULE = {'rule': 'numeric_bins', 'column': 1, 'num_bins': 5}  # as in flows/train.yml


def _train(process, ids, points):
    Client(port=process.ports['grpc']).post(
        '/train', DocList[Doc]([Doc(id=i, tensor=p) for i, p in zip(ids, points)]), request_size=len(ids))


def _stored_labels(cwd):
    """``{id: label}`` of every doc in the trainer's SQLite training db."""
    paths = list((cwd / 'workspace').rglob('training.sqlite'))
    assert len(paths) == 1, paths
    store = DocumentStore(paths[0])
    try:
        return {doc.id: doc.label for _, doc in store.page(0, 10_000)}
    finally:
        store.close()


def test_fitted_bins_survive_a_sigkill_restart(tmp_path):
    x, _ = make_swiss_roll(60, noise=0.05, random_state=0)
    x = x.astype(np.float32)
    low, high = float(x[:, 1].min()), float(x[:, 1].max())
    mid = (low + high) / 2
    probes = np.array([[x[0, 0], low, x[0, 2]], [x[1, 0], mid, x[1, 2]]], dtype=np.float32)
    original = build_rule({**RULE, 'low': low, 'high': high})
    expected = assign_labels(original, [{'tensor': p} for p in probes])
    refit = assign_labels(build_rule(RULE), [{'tensor': p} for p in probes])  # bins fitted on the probes alone
    assert expected == ['0', '2'] and refit == ['0', '4']  # so the test tells the two apart

    flow = FlowProcess(REPO / 'flows/train.yml', tmp_path, free_ports=True).start()
    try:
        ids = [f'p{i}' for i in range(len(x))]
        _train(flow, ids, x)
        assert _stored_labels(tmp_path) == dict(zip(ids, assign_labels(original, [{'tensor': p} for p in x])))
        os.killpg(flow.process.pid, signal.SIGKILL)  # no shutdown hooks run
        flow.process.wait(10)
    finally:
        flow.stop()

    flow = FlowProcess(REPO / 'flows/train.yml', tmp_path, free_ports=True).start()
    try:
        _train(flow, ['probe-min', 'probe-mid'], probes)
    finally:
        flow.stop()
    labels = _stored_labels(tmp_path)
    assert [labels['probe-min'], labels['probe-mid']] == expected
    assert len(labels) == len(x) + 2
