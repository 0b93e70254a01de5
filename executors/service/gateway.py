"""The service's gateway: Jina's gRPC gateway plus an HTTP gateway that keeps every document and
answers user errors with 4xx.

Jina's own HTTP gateway cuts a request into chunks of 100 documents and answers with the first
chunk only, and turns every executor error into HTTP 500. Here each HTTP request travels
through the flow as one request (executors refuse requests over their ``limits.max_docs`` with
413, so nothing is ever dropped silently), and an executor's :class:`executors.errors.InputError`
becomes its ``http_status`` (400, 404, 409, 413) with the error's message as ``detail``; other
exceptions stay 500. gRPC is Jina's gateway unchanged (errors carry their message).

Use it in a Flow YAML: ``with: {uses: ServiceGateway, py_modules: [executors/service/gateway.py],
protocol: [grpc, http], port: [...]}``.
"""
import math
import os
from typing import Dict, List, Optional, Union

from jina.parsers.helper import _get_gateway_class
from jina.serve.runtimes.gateway.composite import CompositeGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer

from executors.errors import http_status_of


def _error_response(status) -> 'tuple[int, str]':
    """``(HTTP status, message)`` of an error status from the flow."""
    args = list(status.exception.args)
    message = args[0] if len(args) == 1 else (status.description or 'error')
    return http_status_of(status.exception.name), message


def non_finite_number(value, path: str = 'parameters'):
    """The path of the first NaN/infinite number in ``value`` (nested dicts/lists), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_number(item, f'{path}.{key}' if isinstance(key, str) else f'{path}[{key}]')
        if found:
            return found
    return None


def build_app(streamer, title: str, description: str, cors: bool, logger):
    """A FastAPI app with one ``POST /<endpoint>`` per endpoint the flow's executors serve.

    Body: ``{"data": [doc, ...] | doc, "parameters": {...}}``; answer: ``{"data": [...],
    "parameters": {...}, "header": {...}}`` (as Jina's), or ``{"detail": message}`` with a 4xx
    for a user error, 503 when an executor is unreachable, 500 for a fault of the service.
    """
    import pydantic
    from docarray import DocList
    from docarray.base_doc.docarray_response import DocArrayResponse
    from fastapi import FastAPI, HTTPException
    from fastapi.middleware.cors import CORSMiddleware
    from jina.excepts import InternalNetworkError
    from jina.proto import jina_pb2
    from pydantic import BaseModel

    app = FastAPI(title=title or 'Fine-tuned embedding search', description=description or __doc__)
    if cors:
        app.add_middleware(CORSMiddleware, allow_origins=['*'], allow_credentials=True, allow_methods=['*'],
                           allow_headers=['*'])

    @app.on_event('shutdown')
    async def _shutdown():
        await streamer.close()

    class Header(BaseModel):
        request_id: Optional[str] = None
        target_executor: Optional[str] = None

    def add_route(endpoint: str, input_doc, output_doc):
        input_model = pydantic.create_model(
            f'{endpoint.strip("/").replace("/", "_")}_input_model',
            data=(Union[List[input_doc], input_doc], []), parameters=(Optional[Dict], None),
            header=(Optional[Header], None))
        output_model = pydantic.create_model(
            f'{endpoint.strip("/").replace("/", "_")}_output_model',
            data=(List[output_doc], ...), parameters=(Optional[Dict], None), header=(Optional[Dict], None))

        @app.post(f'/{endpoint.strip("/")}', summary=f'Endpoint {endpoint}', response_model=output_model,
                  response_class=DocArrayResponse)
        async def post(body: input_model):
            bad = non_finite_number(body.parameters or {})
            if bad:  # a protobuf Struct cannot carry it: say so instead of failing inside the flow
                raise HTTPException(status_code=400, detail=f'{bad}: must be a finite number, got '
                                                            f'{_value_at(body.parameters, bad)}')
            data = body.data if isinstance(body.data, list) else [body.data]
            docs = DocList[input_doc](data)
            for doc in docs:  # the gateway's model (rebuilt from a JSON schema) lost docarray's id factory
                if getattr(doc, 'id', '') is None:
                    doc.id = os.urandom(16).hex()
            header = body.header or Header()
            responses = []
            try:
                async for response in streamer.stream_docs(
                        docs, request_size=max(len(docs), 1), exec_endpoint=endpoint, parameters=body.parameters,
                        target_executor=header.target_executor, request_id=header.request_id or os.urandom(16).hex(),
                        return_results=True, return_type=DocList[output_doc]):
                    if response.header.status.code == jina_pb2.StatusProto.ERROR:
                        code, message = _error_response(response.header.status)
                        raise HTTPException(status_code=code, detail=message)
                    responses.append(response)
            except InternalNetworkError as err:
                logger.error(f'error while getting responses from executors: {err.details()}')
                raise HTTPException(status_code=503, detail=f'an executor is unreachable: {err.details()}')
            if len(responses) != 1:  # one request in, one answer out: anything else would lose documents
                raise HTTPException(status_code=500, detail=f'the flow answered {len(responses)} responses to one '
                                                            'request')
            return responses[0].to_dict()

    for endpoint, models in streamer._endpoints_models_map.items():
        if endpoint == '_jina_dry_run_' or models.get('is_generator'):
            continue
        add_route(endpoint, models['input'], models['output'])
    return app


def _value_at(parameters, path: str):
    value = parameters
    for part in path.replace('[', '.').replace(']', '').split('.')[1:]:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


class ServiceHTTPGateway(HTTPGateway):
    """HTTP server of :class:`ServiceGateway`."""

    @property
    def app(self):
        return build_app(self._request_handler.streamer, title=self.title, description=self.description,
                         cors=self.cors, logger=self.logger)


class ServiceGateway(CompositeGateway):
    """Jina's gRPC (and websocket) gateway beside :class:`ServiceHTTPGateway` for HTTP."""

    def __init__(self, **kwargs):
        CompositeBaseServer.__init__(self, **kwargs)
        from jina.enums import ProtocolType

        self.servers = []
        for server_kwargs in self._server_kwargs:
            protocol = server_kwargs['runtime_args']['protocol']
            cls = ServiceHTTPGateway if protocol == ProtocolType.HTTP else _get_gateway_class(protocol)
            self.servers.append(cls(**server_kwargs))
        self.gateways = self.servers
