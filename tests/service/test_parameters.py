import pytest

from executors.data.schema import Doc, doc_label
from executors.errors import InputError
from executors.evaluation.tables import comparison_table, match_relevance
from executors.service.parameters import require_docs, validate_parameters


def test_grpc_floats_become_ints_and_jina_keys_are_dropped():
    assert validate_parameters('/search', {'limit': 5.0, '__results__': {}}) == {'limit': 5}
    assert validate_parameters('/fit', {'learning_rate': 1, 'wait': True}) == {'learning_rate': 1.0, 'wait': True}


@pytest.mark.parametrize('endpoint, params, match', [
    ('/search', {'limt': 3}, 'parameters.limt: unknown parameter for /search; known: efSearch, fields, filter, limit, nprobe'),
    ('/search', {'limit': 2.5}, 'parameters.limit: expected int'),
    ('/search', {'limit': True}, 'parameters.limit: expected int'),
    ('/fit', {'epochs': 'ten'}, 'parameters.epochs'),
    ('/index', {'limit': 3}, 'known: none'),
])
def test_bad_parameters_name_the_field(endpoint, params, match):
    with pytest.raises(InputError, match=match):
        validate_parameters(endpoint, params)


def test_empty_requests_are_refused():
    with pytest.raises(InputError, match='holds no documents'):
        require_docs('/index', [])


def test_legacy_label_tag_is_read():
    assert doc_label(Doc(label='a', tags={'finetuner_label': 'b'})) == 'a'
    assert doc_label(Doc(tags={'finetuner_label': 3.0})) == '3'
    assert doc_label(Doc()) is None


def test_match_relevance_and_table():
    rel = match_relevance(['a', 'b'], [['a', 'b', 'a'], ['a']], k=3)
    assert rel.tolist() == [[1, 0, 1], [0, 0, 0]]
    with pytest.raises(InputError, match=r'docs\[0\].label'):
        match_relevance([None], [['a']], k=1)
    table = comparison_table({'before': {'mAP@10': 0.5}, 'after': {'mAP@10': 0.75, 'MRR': 1.0}})
    assert table.splitlines() == ['| metric | before | after |', '|---|---|---|', '| MRR |  | 1.000 |',
                                  '| mAP@10 | 0.500 | 0.750 |']
