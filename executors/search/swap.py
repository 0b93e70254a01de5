"""Hot-swap the search flow to a new model version without a restart.

Steps (each a request to the running search flow)::

    /model/prepare  {version}   Encoder loads v beside the active model; Indexer opens generation v;
                                from now on /index docs are embedded by both versions
    /model/missing  {version}   Indexer returns stored docs that generation v lacks ...
    /model/reindex  {version}   ... the Encoder embeds them with v, the Indexer adds them to generation v
                                (repeated until nothing is missing)
    /model/activate {version}   Encoder embeds queries with v; Indexer serves v; the old generation answers
                                the queries embedded before, and is dropped once none can still arrive
                                (executors.search.retirement)

Queries keep being answered throughout, each from the generation of the version that
embedded it. Run ``python -m executors.search.swap --port 54620`` after a fit has published.
"""
import argparse
import json
import sys
import time
from typing import Any, Dict, Optional

from executors.data.schema import Doc, DocList, Report


def hot_swap(client, version: Optional[int] = None, batch_size: int = 256, progress=None) -> Dict[str, Any]:
    """Swap the flow behind ``client`` (a ``jina.Client``) to ``version`` (default: the store's
    current); returns the final status report."""
    prepared = client.post('/model/prepare', parameters={} if version is None else {'version': version},
                           return_type=DocList[Report])
    version = int(prepared[0].data['version'])
    reindexed = 0
    while True:
        missing = client.post('/model/missing', parameters={'version': version, 'limit': batch_size},
                              return_type=DocList[Doc])
        if len(missing) == 0:
            break
        results = client.post('/model/reindex', missing, parameters={'version': version},
                              request_size=len(missing), return_type=DocList[Report])
        reindexed += sum(int(r.data['reindexed']) for r in results)
        if progress:
            progress(reindexed, int(results[-1].data['missing']))
    activated = client.post('/model/activate', parameters={'version': version}, return_type=DocList[Report])
    return {**activated[0].data, 'reindexed': reindexed}


def wait_until_serving(client, version: int, timeout: float = 300.0, poll_seconds: float = 0.5,
                       progress=None) -> Dict[str, Any]:
    """Wait until the flow behind ``client`` serves ``version``: for a search flow that follows the
    store (``follow_store``), which swaps itself when a fit is promoted. Returns the final
    ``/model/status`` report; raises ``TimeoutError`` (with the last status) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.post('/model/status', return_type=DocList[Report])[0].data
        indexer = status.get('indexer', {})
        if indexer.get('active_version') == version and indexer.get('pending_version') is None:
            return status
        if progress:
            progress(status.get('lifecycle', {}).get('progress', {}))
        if time.monotonic() > deadline:
            raise TimeoutError(f'the search flow does not serve version {version} after {timeout:.0f} s; '
                               f'last status: {json.dumps(status)[:2000]}')
        time.sleep(poll_seconds)


def main(argv=None) -> int:
    from jina import Client

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--host', default='localhost')
    parser.add_argument('--port', type=int, default=54620, help='the search flow gRPC port')
    parser.add_argument('--version', type=int, default=None, help='default: the model store current version')
    args = parser.parse_args(argv)
    client = Client(host=args.host, port=args.port)
    result = hot_swap(client, args.version,
                      progress=lambda done, left: print(f'reindexed {done}, {left} left', file=sys.stderr))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
