"""Encoder: embeds decoded docs with the search flow's serving model version, through that
version's own input transform (loaded from its ``model.json``), and stamps ``doc.model_version``."""
import threading
from typing import Dict, List, Optional

import numpy as np
from docarray.typing import NdArray
from jina import Executor, requests

from executors.data.schema import Batch, Doc, DocList, Report, assign, report
from executors.errors import InputError
from executors.models import ModelStore
from executors.models.inference import doc_content
from executors.models.serving import VersionedEncoder
from executors.search.retirement import ReplicaRecorder
from executors.search.serving_state import read_serving_state
from executors.service.limits import RequestLimits
from executors.service.parameters import require_docs, required_parameter, validate_parameters


class Encoder(Executor):
    """Embeds on ``/index`` and ``/search``; swaps models with ``/model/prepare``,
    ``/model/reindex`` (embed stored docs with the prepared version) and ``/model/activate``.

    ``index_dir``: the Indexer's index directory; the Encoder serves the version recorded there
    (on start and before every request, so every replica follows a swap, including the ones the
    Indexer's :class:`executors.search.lifecycle.ModelFollower` runs), and the store's current
    version only for a new index. While a swap is prepared, ``/index`` docs are embedded by both
    versions (the candidate's in ``candidate_embedding``) so the Indexer's next generation stays
    complete. Embeddings and version stamps sent by a client are overwritten, never used.
    ``limits``: see :class:`executors.service.limits.RequestLimits`.

    With ``index_dir`` each replica also follows the index in the background (every
    ``follow_interval`` seconds, so an idle replica switches too) and keeps its record in
    ``<index_dir>/encoders/`` (versions it embeds with, query requests it stamped per version),
    from which the Indexer knows when no query can need an old generation any more
    (:mod:`executors.search.retirement`).
    """

    def __init__(self, store_dir: str = 'models', model_name: str = 'model', batch_size: int = 256,
                 device: str = 'cpu', index_dir: Optional[str] = None, limits: Optional[Dict] = None,
                 follow_interval: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.encoder = VersionedEncoder(ModelStore(store_dir), model_name, batch_size=batch_size, device=device)
        self.index_dir = index_dir
        self.limits = RequestLimits.from_config(limits)
        if not float(follow_interval) > 0:
            raise InputError(f'follow_interval: expected seconds > 0, got {follow_interval!r}')
        self._followed = None
        self._recorded = None
        self._follow_lock = threading.RLock()
        self.recorder = ReplicaRecorder(index_dir) if index_dir is not None else None
        self._follow_index()
        self._stop = threading.Event()
        self._watcher = None
        if index_dir is not None:
            self._watcher = threading.Thread(target=self._watch, args=(float(follow_interval),),
                                             name='encoder-follows-index', daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        if self.recorder is not None:
            self.recorder.remove()
        super().close()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._follow_index()
            except Exception:  # noqa: BLE001 - e.g. a version being published; retried next time
                self.logger.warning('following the index state failed; retrying')

    def _follow_index(self, force: bool = False) -> None:
        """Serve the index's versions if they changed since last seen (``force``: even if not,
        e.g. to resume a swap that failed half-way), then record what this replica serves."""
        if self.index_dir is None:
            return
        with self._follow_lock:
            state = read_serving_state(self.index_dir)
            if (force or state != self._followed) and state != (None, None):
                self.encoder.follow(*state)
            self._followed = state
            self._record()

    def _record(self, force: bool = False) -> None:
        """Rewrite this replica's record when the versions it embeds with changed (``force``: also
        when only counts did, e.g. after uncounting a failed request)."""
        if self.recorder is None:
            return
        with self._follow_lock:
            active, candidate, stamped = self.encoder.record()
            if force or (active, candidate) != self._recorded:
                self.recorder.write(active, candidate, stamped)
                self._recorded = (active, candidate)

    def _unstamp(self, versions: List[int]) -> None:
        """A query request failed here: uncount its stamps (a failure inside ``embed`` uncounts
        its own) and rewrite the record."""
        self.encoder.unstamp(versions)
        self._record(force=True)

    def _embed(self, endpoint: str, docs: DocList[Doc], parameters: Dict, both: bool = False) -> DocList[Doc]:
        validate_parameters(endpoint, parameters)
        require_docs(endpoint, docs)
        self.limits.check_docs(endpoint, docs)
        self._follow_index()
        contents = [doc_content(d) for d in docs]
        stamped = []
        try:
            if both:
                vectors, version, candidate_vectors, candidate = self.encoder.embed_both(contents)
            else:  # a query: counted under its version (see executors.search.retirement)
                (vectors, version), candidate_vectors, candidate = self.encoder.embed(contents, stamp=True), None, None
                stamped.append(version)
            vectors = NdArray._docarray_from_native(vectors)
            if candidate is not None:
                candidate_vectors = NdArray._docarray_from_native(candidate_vectors)
            mark_truncated(docs, contents, self.encoder.input_transform(version))
            for i, doc in enumerate(docs):
                assign(doc, embedding=vectors[i], model_version=version,
                       candidate_embedding=None if candidate is None else candidate_vectors[i],
                       candidate_version=candidate)
                if not both:  # a query needs only its embedding from here on
                    assign(doc, tensor=None)
        except BaseException:
            if not both:
                self._unstamp(stamped)
            raise
        return docs

    @requests(on='/index')
    def index(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._embed('/index', docs, parameters, both=True)

    @requests(on='/index/bulk')
    def index_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        validate_parameters('/index/bulk', parameters)
        require_docs('/index/bulk', docs)
        for batch in docs:
            if batch.tensor is None:
                raise InputError('docs.tensor: a /index/bulk batch needs tensor [N, ...] with one row per id')
            self.limits.check_count('/index/bulk', len(batch.ids))
            if np.size(batch.tensor) > self.limits.max_tensor_elements * max(len(batch.ids), 1):
                raise InputError(f'docs.tensor: {np.size(batch.tensor)} elements for {len(batch.ids)} ids; at most '
                                 f'{self.limits.max_tensor_elements} per item (limits.max_tensor_elements)')
            self._follow_index()
            vectors, version, candidate_vectors, candidate = self.encoder.embed_both(list(np.asarray(batch.tensor)))
            batch.embedding, batch.model_version = vectors, version
            batch.candidate_embedding, batch.candidate_version = candidate_vectors, candidate
        return docs

    @requests(on='/search/bulk')
    def search_bulk(self, docs: DocList[Batch], parameters: Dict, **kwargs) -> DocList[Batch]:
        validate_parameters('/search/bulk', parameters)
        require_docs('/search/bulk', docs)
        self._follow_index()
        stamped = []  # one per batch (the Indexer counts batches too)
        try:
            for batch in docs:
                if batch.tensor is None:
                    raise InputError('docs.tensor: a /search/bulk batch needs tensor [N, ...] with one query per row')
                self.limits.check_count('/search/bulk', len(batch.tensor))
                vectors, version = self.encoder.embed(list(np.asarray(batch.tensor)), stamp=True)
                stamped.append(version)
                assign(batch, embedding=vectors, model_version=version, tensor=None,
                       candidate_embedding=None, candidate_version=None)
        except BaseException:
            self._unstamp(stamped)
            raise
        return docs

    @requests(on='/search')
    def search(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        return self._embed('/search', docs, parameters)

    @requests(on='/search/evaluate')
    def search_evaluate(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        """Labelled queries for the Indexer's evaluation of the serving version."""
        return self._embed('/search/evaluate', docs, parameters)

    @requests(on='/model/reindex')
    def reindex(self, docs: DocList[Doc], parameters: Dict, **kwargs) -> DocList[Doc]:
        version = required_parameter('/model/reindex', validate_parameters('/model/reindex', parameters), 'version')
        self.limits.check_docs('/model/reindex', docs)
        self._follow_index()
        if len(docs):
            vectors, version = self.encoder.embed([doc_content(d) for d in docs], version)
            for doc, vector in zip(docs, vectors):
                doc.embedding, doc.model_version = vector, version
                doc.candidate_embedding = doc.candidate_version = None
        return docs

    @requests(on='/model/prepare')
    def prepare(self, parameters: Dict, **kwargs) -> DocList[Report]:
        version = validate_parameters('/model/prepare', parameters).get('version')
        self._follow_index(force=True)
        prepared = self.encoder.prepare(version)
        self._record()
        return report({'version': prepared, 'encoder': self.encoder.status()})

    @requests(on='/model/activate')
    def activate(self, parameters: Dict, **kwargs) -> DocList[Report]:
        version = required_parameter('/model/activate', validate_parameters('/model/activate', parameters), 'version')
        self._follow_index()
        self.encoder.activate(version)
        self._record()
        return report({'version': version, 'encoder': self.encoder.status()})

    @requests(on='/model/status')
    def model_status(self, parameters: Dict, **kwargs) -> DocList[Report]:
        validate_parameters('/model/status', parameters)
        self._follow_index()
        self.encoder.ensure_active()
        return report({'encoder': self.encoder.status()})


TRUNCATED_TAG = 'truncated_to_tokens'


def mark_truncated(docs, contents, transform) -> None:
    """Tag each text the version's text transform cuts: ``doc.tags['truncated_to_tokens'] = max_length``."""
    if transform is None or getattr(transform, 'modality', None) != 'text' or not transform.truncation:
        return
    texts = [(i, c) for i, c in enumerate(contents) if isinstance(c, str)]
    for position in transform.truncated([c for _, c in texts]):
        docs[texts[position][0]].tags[TRUNCATED_TAG] = transform.max_length
