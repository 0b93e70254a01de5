"""Text through the flows (quick mode): CLINC150 sentences of 10 easily confused intents streamed to
flows/text-train.yml over gRPC, /fit (MultipleNegativesRankingLoss, the flow's text defaults), hot
swap into the running flows/text-search.yml, queries over HTTP return better neighbours than before.
Bad text input gets an error naming the document; a too-long text is truncated and tagged."""
from pathlib import Path

import httpx
import numpy as np
import pytest
from jina import Client

from executors.data.schema import Doc, DocList, Report
from executors.demos.clinc150 import load_clinc150
from executors.evaluation.metrics import retrieval_metrics
from executors.search.swap import hot_swap
from executors.service.flow_process import FlowProcess

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(1200)
INTENTS = ['timezone', 'time', 'change_ai_name', 'change_user_name', 'what_is_your_name', 'user_name',
           'calories', 'nutrition_info', 'shopping_list', 'shopping_list_update']


def _first(split, per_intent):
    texts, labels = load_clinc150(split, INTENTS)
    rows, seen = [], {}
    for i, label in enumerate(labels):
        if seen.get(label, 0) < per_intent:
            seen[label] = seen.get(label, 0) + 1
            rows.append(i)
    return [texts[i] for i in rows], [labels[i] for i in rows]


def _search_http(url, texts, limit=5):
    response = httpx.post(f'{url}/search', json={'data': [{'id': f'q{i}', 'text': t} for i, t in enumerate(texts)],
                                                 'parameters': {'limit': limit}}, timeout=300)
    response.raise_for_status()
    return response.json()['data']


def _map(answers, query_labels, label_of, per_intent, limit=5):
    neighbours = np.array([[label_of[match_id] for match_id in a['match_ids']] for a in answers])
    relevance = (neighbours == np.array(query_labels)[:, None]).astype(float)
    return retrieval_metrics(relevance, np.full(len(query_labels), per_intent), limit,
                             metrics=['mAP-retrieved', 'precision'])


def test_text_fit_and_swap_improve_http_search(tmp_path):
    train_texts, train_labels = _first('train', 20)
    test_texts, test_labels = _first('test', 6)
    label_of = {f'd{i}': label for i, label in enumerate(train_labels)}
    with FlowProcess(REPO / 'flows/text-train.yml', tmp_path, free_ports=True) as train_flow, \
            FlowProcess(REPO / 'flows/text-search.yml', tmp_path, free_ports=True) as search_flow:
        train, search = Client(port=train_flow.ports['grpc']), Client(port=search_flow.ports['grpc'])
        search_http = f"http://localhost:{search_flow.ports['http']}"
        search.post('/index', DocList[Doc]([Doc(id=f'd{i}', text=t) for i, t in enumerate(train_texts)]),
                    request_size=100)
        before_answers = _search_http(search_http, test_texts)
        assert {a['model_version'] for a in before_answers} == {1}
        before = _map(before_answers, test_labels, label_of, 20)

        # labels come from the tag the text flow's LabelAssigner reads
        train.post('/train', DocList[Doc]([Doc(id=f'd{i}', text=t, tags={'intent': label})
                                           for i, (t, label) in enumerate(zip(train_texts, train_labels))]))
        status = train.post('/fit', parameters={'loss': 'MultipleNegativesRankingLoss', 'epochs': 3, 'wait': True},
                            return_type=DocList[Report])[0].data
        assert status['job']['state'] == 'done', status['job'].get('error')
        swap = hot_swap(search)
        assert swap['version'] == 2
        after_answers = _search_http(search_http, test_texts)
        assert {a['model_version'] for a in after_answers} == {2}
        after = _map(after_answers, test_labels, label_of, 20)
        assert after['precision@5'] > before['precision@5'], (before, after)
        assert after['mAP-retrieved@5'] >= before['mAP-retrieved@5'], (before, after)

        # a text longer than max_length (64 tokens) is truncated and says so; a short one is not tagged
        long_text = 'what time is it in the time zone of ' + ' and '.join(['paris'] * 60)
        answers = _search_http(search_http, [long_text, 'what time is it'])
        assert answers[0]['tags'].get('truncated_to_tokens') == 64
        assert 'truncated_to_tokens' not in answers[1]['tags']

        # an empty text: an error naming the document, over gRPC and HTTP; the flow keeps serving
        with pytest.raises(Exception, match=r"id \\?'empty\\?'\): text: is empty"):
            search.post('/search', DocList[Doc]([Doc(id='fine', text='hello'), Doc(id='empty', text='  ')]))
        response = httpx.post(f'{search_http}/search', json={'data': [{'id': 'empty', 'text': ''}]}, timeout=60)
        assert response.status_code >= 400 and "id 'empty'" in response.text and 'text: is empty' in response.text
        # a non-string text: refused by the schema or the decoder, naming the field
        response = httpx.post(f'{search_http}/search', json={'data': [{'id': 'num', 'text': {'a': 1}}]}, timeout=60)
        assert response.status_code >= 400 and 'text' in response.text
        with pytest.raises(Exception, match=r"id \\?'notext\\?'\): text: expected a string"):
            search.post('/search', DocList[Doc]([Doc(id='notext', uri='x.txt')]))
        assert len(_search_http(search_http, ['what time is it'])[0]['match_ids']) == 5
