"""LabelAssigner: sets each doc's ``label`` from a rule (tag, URI segment, regex, numeric bins, pairs)."""
import json
from pathlib import Path
from typing import Dict, Optional

from jina import Executor, requests

from executors.data.labels import NumericBinsRule, assign_labels, build_rule
from executors.data.schema import Doc, DocList, doc_label
from executors.service.parameters import require_docs, validate_parameters

DEFAULT_RULE = {'rule': 'tag', 'tag': 'finetuner_label'}


class LabelAssigner(Executor):
    """Labels docs on ``/train`` and ``/evaluate``.

    ``rule``: a label-rule spec (see :mod:`executors.data.labels`), default the legacy
    ``tags['finetuner_label']``. Docs that already have a label keep it unless
    ``overwrite``. A numeric-bins rule without ``low``/``high`` is fitted on the first request
    it sees (send the whole training set in that request, or set ``low``/``high``), then saved
    in the workspace so labels stay the same across requests and restarts.
    """

    def __init__(self, rule: Optional[Dict] = None, overwrite: bool = False, **kwargs):
        super().__init__(**kwargs)
        spec = rule or DEFAULT_RULE
        self._saved_rule = Path(self.workspace) / 'label_rule.json' if self.workspace else None
        if self._saved_rule and self._saved_rule.is_file():
            saved = json.loads(self._saved_rule.read_text())
            if {k: v for k, v in saved.items() if k not in ('low', 'high')} == \
                    {k: v for k, v in build_rule(spec).to_spec().items() if k not in ('low', 'high')}:
                spec = saved
        self.rule = build_rule(spec)
        self.overwrite = overwrite

    def _assign(self, endpoint: str, docs: DocList[Doc], parameters: Dict) -> DocList[Doc]:
        validate_parameters(endpoint, parameters)
        require_docs(endpoint, docs)
        todo = [d for d in docs if self.overwrite or doc_label(d) is None]
        was_fitted = not isinstance(self.rule, NumericBinsRule) or self.rule.is_fitted
        fields = [{'id': d.id, 'tags': d.tags, 'uri': d.uri, 'text': d.text,
                   'tensor': None if d.tensor is None else d.tensor} for d in todo]
        for doc, label in zip(todo, assign_labels(self.rule, fields)):
            doc.label = label
        for doc in docs:
            doc.label = doc_label(doc)
        if not was_fitted and self._saved_rule:
            self._saved_rule.write_text(json.dumps(self.rule.to_spec()))
        return docs

    @requests(on='/train')
    def train(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._assign('/train', docs, parameters)

    @requests(on='/evaluate')
    def evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._assign('/evaluate', docs, parameters)
