"""When an old index generation is dropped: once no query can still need it.

After a swap activates version ``n`` the index keeps the old generation ``o`` *retiring*: it no
longer takes new documents but still answers queries embedded by ``o``. Queries are embedded and
stamped by the Encoder replicas, then travel to the Indexer, so a query stamped ``o`` may still be
in transit when the Indexer activates ``n``. The generation is dropped when

    every live Encoder replica embeds queries with a version other than ``o`` (it acknowledged the switch)
    and   finished[o] >= sum over replicas r of stamped_r[o]

* ``stamped_r[v]``: query requests (``/search``, ``/search/evaluate``; ``/search/bulk`` counts one
  per batch) replica ``r`` stamped with version ``v`` since it started, cumulative. The version
  choice and the count happen under one lock, and the replica writes its record after it switched,
  so once it embeds with another version its ``stamped_r[o]`` is final (a request that fails in the
  Encoder after being counted is uncounted and the record rewritten).
* ``finished[v]``: such requests stamped ``v`` this Indexer process has finished (answered or
  failed). With shards every shard receives every query request, so each shard compares its own
  count; each Indexer's count starts with its process, like the replicas' (a flow starts and
  stops as a whole).

When the Indexer has finished as many ``o``-stamped requests as the replicas stamped, none is in
transit, and none can follow. Under normal operation the rule is exact: no query meets a dropped
generation and none waits longer than the slowest request in flight.

Replica records: ``<index_dir>/encoders/<host>-<pid>.json``, written atomically (temporary file +
rename) by each replica when it starts (this registers it) and whenever the versions it embeds
with change: ``{host, pid, proc_start, active, candidate, stamped: {version: count}}`` (the count of
its current version is not rewritten per request: only finished versions' counts matter). The
swap's other step uses the same records: before re-embedding, the Indexer waits until every live
replica has loaded the candidate (so documents indexed meanwhile carry its embedding).

As long as a live replica embeds with ``o``, ``o`` is kept (its queries are legitimate; with shards
this covers the shards that switch later). Failures: a request lost between Encoder and Indexer
(a killed client, a gateway fault) would hold the generation forever, so once every live replica
has switched it is dropped at the latest ``timeout`` seconds (default 60) later. A replica whose
process is gone (same host: ``/proc/<pid>`` with the recorded start time; replicas on other hosts
are assumed alive) is not waited for; if it died before acknowledging, its count is unknown, so
the drop waits for the timeout; its record is removed at the drop, and records of dead processes
left by an earlier run are removed when an Indexer starts. A query embedded by a dropped version
gets a :class:`executors.errors.RetryableError` (HTTP 503) telling the client to resend it;
resent, it is embedded by the serving version.
A restart (even ``kill -9``) mid-switch loses nothing: the serving state is ``state.json``, a
restarted replica embeds with the version the index serves from its first request, and the
generation that was retiring is not restored (its stored embeddings were dropped at activation).
"""
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

REPLICA_DIR = 'encoders'
DEFAULT_TIMEOUT = 60.0


def _process_start(pid: int) -> Optional[int]:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None if unknown."""
    try:
        stat = Path(f'/proc/{int(pid)}/stat').read_text()
    except OSError:
        return None
    return int(stat.rsplit(')', 1)[1].split()[19])


def _write_json(path: Path, data: Dict) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@dataclass
class ReplicaRecord:
    """What one Encoder replica last wrote about itself."""

    path: Path
    host: str
    pid: int
    proc_start: Optional[int]
    active: Optional[int]
    candidate: Optional[int]
    stamped: Dict[int, int] = field(default_factory=dict)

    def alive(self) -> bool:
        """False when the process is known to be gone (same host only; other hosts: assumed alive)."""
        if self.host != socket.gethostname():
            return True
        if Path('/proc/self/stat').exists():
            return self.proc_start is not None and _process_start(self.pid) == self.proc_start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def read_replicas(index_dir) -> List[ReplicaRecord]:
    """The replica records under ``index_dir`` (unreadable or half-written ones are skipped)."""
    records = []
    for path in sorted((Path(index_dir) / REPLICA_DIR).glob('*.json')):
        try:
            data = json.loads(path.read_text())
            records.append(ReplicaRecord(path, str(data['host']), int(data['pid']), data.get('proc_start'),
                                         data.get('active'), data.get('candidate'),
                                         {int(v): int(n) for v, n in data.get('stamped', {}).items()}))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return records


def remove_dead_replicas(index_dir) -> List[Path]:
    """Remove the records of replicas whose process is gone; returns their paths."""
    removed = []
    for record in read_replicas(index_dir):
        if not record.alive():
            record.path.unlink(missing_ok=True)
            removed.append(record.path)
    return removed


class ReplicaRecorder:
    """An Encoder replica's record in ``<index_dir>/encoders/`` (the replica's side of the rule)."""

    def __init__(self, index_dir):
        self.dir = Path(index_dir) / REPLICA_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.path = self.dir / f'{self.host}-{self.pid}.json'
        self._lock = threading.Lock()

    def write(self, active: Optional[int], candidate: Optional[int], stamped: Dict[int, int]) -> None:
        """Record the versions this replica embeds with and its stamped-request counts."""
        with self._lock:
            _write_json(self.path, {'host': self.host, 'pid': self.pid, 'proc_start': _process_start(self.pid),
                                    'active': active, 'candidate': candidate,
                                    'stamped': {str(v): int(n) for v, n in sorted(stamped.items())},
                                    'written': time.time()})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def candidate_loaded(records: Iterable[ReplicaRecord], version: int) -> bool:
    """Every live replica embeds with ``version`` or holds it as the candidate."""
    return all(version in (r.active, r.candidate) for r in records if r.alive())


class QueryLedger:
    """The Indexer's side: query requests finished per stamped version, and the drop rule."""

    def __init__(self, index_dir, timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], float] = time.monotonic):
        if not float(timeout) > 0:
            from executors.errors import InputError
            raise InputError(f'drop_timeout: expected seconds > 0, got {timeout!r}')
        self.index_dir, self.timeout, self.clock = None if index_dir is None else Path(index_dir), float(timeout), clock
        self._lock = threading.Lock()
        self.finished: Dict[int, int] = {}
        self._since: Dict[int, float] = {}  # version -> when every live replica had switched from it
        self.last_drop: Dict = {}

    def finish(self, versions: Iterable[Optional[int]]) -> None:
        """Count finished query requests (one per entry; ``None`` entries are ignored)."""
        with self._lock:
            for version in versions:
                if version is not None:
                    self.finished[int(version)] = self.finished.get(int(version), 0) + 1

    def replicas(self) -> List[ReplicaRecord]:
        return [] if self.index_dir is None else read_replicas(self.index_dir)

    def waiting_for(self, version: int, records: Optional[List[ReplicaRecord]] = None) -> Dict:
        """What keeps generation ``version`` from being dropped: ``{}`` when nothing does, else
        ``{'replicas': [live ones not switched], 'dead_unswitched': [...], 'stamped': n, 'finished': m}``."""
        records = self.replicas() if records is None else records
        unswitched = [r for r in records if r.active in (version, None)]
        lagging = [r.path.name for r in unswitched if r.alive()]
        dead = [r.path.name for r in unswitched if r.path.name not in lagging]
        stamped = sum(r.stamped.get(int(version), 0) for r in records)
        with self._lock:
            finished = self.finished.get(int(version), 0)
        if not lagging and not dead and finished >= stamped:
            return {}
        return {'replicas': lagging, 'dead_unswitched': dead, 'stamped': stamped, 'finished': finished}

    def due(self, retiring: Iterable[int]) -> Dict[int, str]:
        """``{version: reason}`` for the retiring versions to drop now: ``'drained'`` by the rule, or
        ``'timeout'`` ``timeout`` seconds after every live replica had switched."""
        now, due = self.clock(), {}
        retiring = [int(v) for v in retiring]
        records = self.replicas() if retiring else []
        with self._lock:
            for version in list(self._since):
                if version not in retiring:
                    del self._since[version]
        for version in retiring:
            waiting = self.waiting_for(version, records)
            if not waiting:
                due[version] = 'drained'
                continue
            if waiting['replicas']:  # a live replica still embeds with it: its queries are legitimate
                continue
            with self._lock:
                since = self._since.setdefault(version, now)
            if now - since >= self.timeout:
                due[version] = 'timeout'
        return due

    def dropped(self, version: int, reason: str) -> None:
        """Note a drop (for ``/model/status``) and forget the records of dead replicas."""
        with self._lock:
            since = self._since.pop(int(version), None)
        self.last_drop = {'version': int(version), 'reason': reason,
                          'seconds_after_switch': None if since is None else round(self.clock() - since, 3)}
        if self.index_dir is not None:
            remove_dead_replicas(self.index_dir)

    def status(self, retiring: Iterable[int]) -> Dict:
        return {'retiring': {str(v): self.waiting_for(v) for v in retiring}, 'last_drop': dict(self.last_drop),
                'finished_queries': {str(v): n for v, n in sorted(self.finished.items())},
                'drop_timeout': self.timeout}
