import json

import numpy as np
import pytest
from sklearn.datasets import make_swiss_roll

from executors.data.labels import (
    NumericBinsRule,
    PairByFileNameRule,
    RegexRule,
    TagRule,
    UriSegmentRule,
    assign_labels,
    build_rule,
)
from executors.errors import InputError


def test_swiss_roll_height_cut_into_five_equal_width_bins():
    points, _ = make_swiss_roll(1500, noise=0.05, random_state=0)
    rule = build_rule({'rule': 'numeric_bins', 'column': 1, 'num_bins': 5})

    labels = assign_labels(rule, [{'tensor': point} for point in points])

    height = points[:, 1]
    scaled = (height - height.min()) / (height.max() - height.min())
    expected = np.clip(np.floor(scaled * 5), 0, 4).astype(int).astype(str)
    assert labels == expected.tolist()
    assert sorted(set(labels)) == ['0', '1', '2', '3', '4']
    assert min(labels.count(label) for label in set(labels)) > 0
    assert labels[int(height.argmax())] == '4'  # the top edge goes in the last bin
    assert rule.to_spec() == {'rule': 'numeric_bins', 'column': 1, 'num_bins': 5,
                              'low': float(height.min()), 'high': float(height.max())}


def test_fitted_bins_are_kept_and_clip_outside_values():
    rule = build_rule({'rule': 'numeric_bins', 'column': 0, 'num_bins': 4})
    assert assign_labels(rule, [{'tensor': np.array([value])} for value in (0.0, 1.0, 2.0, 4.0)]) == ['0', '1', '2', '3']

    second_request = [{'tensor': [value]} for value in (-10.0, 0.99, 1.0, 3.999, 99.0)]
    assert assign_labels(rule, second_request) == ['0', '0', '1', '3', '3']
    rebuilt = build_rule(json.loads(json.dumps(rule.to_spec())))
    assert rebuilt == rule and rebuilt.low == 0.0 and rebuilt.high == 4.0


def test_bins_with_one_bound_given_fit_only_the_other():
    rule = NumericBinsRule(column=-1, num_bins=2, low=0.0)
    assign_labels(rule, [{'tensor': [5.0, v]} for v in (1.0, 3.0)])
    assert (rule.low, rule.high) == (0.0, 3.0)


@pytest.mark.parametrize('column, docs, message', [
    (0, [{'tensor': [1.0]}, {'tensor': [1.0]}], 'low/high: expected low < high, got low=1.0, high=1.0'),
    (1, [{'tensor': np.zeros((2, 2))}], 'docs[0]: tensor: expected a 1-D vector with a column 1, got shape (2, 2)'),
    (1, [{'tensor': [1.0]}], 'docs[0]: tensor: expected a 1-D vector with a column 1, got shape (1,)'),
    (0, [{'tensor': [np.nan]}], 'tensor: column 0 holds NaN or infinite values'),
    (0, [{'uri': 'a.jpg'}], 'tensor: no documents with a tensor to fit bins on column 0'),
])
def test_bins_reject_unusable_tensors(column, docs, message):
    with pytest.raises(InputError) as error:
        assign_labels(NumericBinsRule(column=column, num_bins=3), docs)
    assert message in str(error.value)


def test_bins_doc_without_tensor_named_by_id():
    with pytest.raises(InputError, match=r"docs\[1\] \(id 'b'\): no label from rule .*numeric_bins"):
        assign_labels(NumericBinsRule(column=0, num_bins=2), [{'id': 'a', 'tensor': [1.0]}, {'id': 'b'}, {'tensor': [2.0]}])


def test_pairs_by_file_name():
    uris = ['tll/0001_left.jpg', 'tll/0001_right.jpg', 'x/0002-a.png', 'x/0002-b.png', 'my_pic_3_left.jpeg']
    assert assign_labels(PairByFileNameRule(), [{'uri': uri} for uri in uris]) == ['0001', '0001', '0002', '0002', 'my_pic_3']
    assert PairByFileNameRule().label(uri='tll/0001_middle.jpg') is None
    with pytest.raises(InputError, match='needs a uri whose file name matches'):
        assign_labels(build_rule({'rule': 'pair_by_file_name'}), [{'uri': 'notes.txt'}])


def test_regex_on_uri_text_and_tags():
    assert RegexRule(r'class_(\d+)').label(uri='data/class_12/x.jpg') == '12'
    assert RegexRule(r'^(?P<topic>\w+):', field='text', group='topic').label(text='sports: a match') == 'sports'
    assert RegexRule(r'(.)', field='tags.breed').label(tags={'breed': 'lab'}) == 'l'
    assert RegexRule(r'z(\d)?', group=1).label(uri='z') is None  # group did not take part
    assert RegexRule(r'class_(\d+)').label(uri='other') is None
    assert RegexRule(r'class_(\d+)').label(uri=None) is None


def test_uri_segment():
    rule = UriSegmentRule()
    assert rule.label(uri='data/cats/001.jpg') == 'cats'
    assert rule.label(uri='file:///srv/data/dogs/002.jpg') == 'dogs'
    assert UriSegmentRule(segment=0).label(uri='/animals/cats/001.jpg') == 'animals'
    assert rule.label(uri=None) is None
    with pytest.raises(InputError, match=r"docs\[0\]: uri: '001.jpg' has 1 path segment\(s\), so segment -2 does not exist"):
        assign_labels(rule, [{'uri': '001.jpg'}])


def test_tag_rule_and_integral_float_tags():
    rule = build_rule({'rule': 'tag'})
    docs = [{'tags': {'finetuner_label': 'cat'}}, {'tags': {'finetuner_label': 3}}, {'tags': {'finetuner_label': 3.0}}]
    assert assign_labels(rule, docs) == ['cat', '3', '3']
    assert assign_labels(TagRule('kind'), [{'tags': {}}, {}], require=False) == [None, None]
    with pytest.raises(InputError, match=r"docs\[0\] \(id 7\): no label from rule \{'rule': 'tag', 'tag': 'kind'\}, which needs tags\['kind'\]"):
        assign_labels(TagRule('kind'), [{'id': 7, 'tags': {'other': 1}}])


@pytest.mark.parametrize('spec, message', [
    ({'rule': 'colour'}, "rule: unknown label rule 'colour'; allowed: tag, uri_segment, regex, numeric_bins, pair_by_file_name"),
    ({'tag': 'x'}, 'rule: unknown label rule None'),
    ({'rule': 'numeric_bins', 'column': 1}, "num_bins: required by rule 'numeric_bins'"),
    ({'rule': 'numeric_bins', 'column': 1, 'num_bins': 0}, 'num_bins: expected an integer >= 1, got 0'),
    ({'rule': 'numeric_bins', 'column': '1', 'num_bins': 5}, "column: expected an integer, got '1'"),
    ({'rule': 'numeric_bins', 'column': 1, 'num_bins': 5, 'low': 2, 'high': 1}, 'low/high: expected low < high'),
    ({'rule': 'numeric_bins', 'column': 1, 'num_bins': 5, 'bins': 5}, "bins: not a setting of rule 'numeric_bins'; allowed settings: column, num_bins, low, high"),
    ({'rule': 'regex', 'pattern': '(unclosed'}, "pattern: '(unclosed' is not a valid regular expression"),
    ({'rule': 'regex', 'pattern': 'a(b)', 'group': 2}, 'group: pattern'),
    ({'rule': 'regex', 'pattern': 'a', 'field': 'blob'}, "field: expected 'uri', 'text' or 'tags.<name>'"),
    ({'rule': 'pair_by_file_name', 'pattern': r'(\d+)_left'}, "pattern: '(\\\\d+)_left' has no named group 'pair'"),
    ({'rule': 'tag', 'tag': ''}, 'tag: expected a non-empty string'),
    (['tag'], 'label rule: expected a dict'),
])
def test_bad_specs_name_the_key(spec, message):
    with pytest.raises(InputError) as error:
        build_rule(spec)
    assert message in str(error.value)


@pytest.mark.parametrize('rule', [
    TagRule('breed'), UriSegmentRule(-3), RegexRule(r'(?P<x>\w+)', field='tags.kind', group='x'),
    NumericBinsRule(2, 7, low=-1.0, high=1.5), PairByFileNameRule(),
])
def test_specs_round_trip_through_json(rule):
    assert build_rule(json.loads(json.dumps(rule.to_spec()))) == rule


def test_non_dict_document_is_rejected():
    with pytest.raises(InputError, match=r'docs\[1\]: expected a dict of document fields, got str'):
        assign_labels(TagRule(), [{'tags': {'finetuner_label': 'a'}}, 'b'])
