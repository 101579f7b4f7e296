"""The asyncio client: Client's twin over grpc.aio."""
import asyncio
import random
from typing import Any, AsyncIterator, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from . import _common as c
from ._proto.chatradio.v1 import impression_service_pb2 as pb
from .client import StreamEvent
from .errors import from_rpc_error


class AsyncClient:
    """Same arguments, methods and retries as Client; methods are coroutines
    and stream_impression is an async iterator. Create it inside the event
    loop that uses it.

        async with AsyncClient("localhost:50051") as client:
            r = await client.impression("The lungs are clear.")
    """

    def __init__(self, target: Optional[c.Target] = None, *, token: Optional[str] = None,
                 tls: Union[None, bool, c.TLS] = None, timeout: float = c.DEFAULT_TIMEOUT_S,
                 retry: c.RetryPolicy = c.RetryPolicy(), options: Sequence[Tuple[str, Any]] = ()):
        p = c.channel_params(target, token, tls, options)
        self.target = p.target
        self._metadata = p.metadata
        self._timeout = timeout
        self._retry = retry
        self._rng = random.Random()
        if p.credentials is None:
            self._channel = grpc.aio.insecure_channel(p.target, options=p.options)
        else:
            self._channel = grpc.aio.secure_channel(p.target, p.credentials, options=p.options)
        self._rpc = c.bind_methods(self._channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def impression(self, findings: str, *, language: c.EnumArg = None, modality: c.EnumArg = None,
                         body_system: c.EnumArg = None, institution: Optional[str] = None,
                         template: Optional[str] = None, sampling: c.SamplingArg = None, priority: c.EnumArg = None,
                         client_request_id: Optional[str] = None,
                         timeout: Optional[float] = None) -> pb.GenerateImpressionResponse:
        req = c.generate_request(findings, language=language, modality=modality, body_system=body_system,
                                 institution=institution, template=template, sampling=sampling, priority=priority,
                                 client_request_id=client_request_id)
        return await self._unary("generate", req, timeout)

    async def stream_impression(self, findings: str, *, language: c.EnumArg = None, modality: c.EnumArg = None,
                                body_system: c.EnumArg = None, institution: Optional[str] = None,
                                template: Optional[str] = None, sampling: c.SamplingArg = None,
                                priority: c.EnumArg = None, client_request_id: Optional[str] = None,
                                timeout: Optional[float] = None) -> AsyncIterator[StreamEvent]:
        req = c.generate_request(findings, language=language, modality=modality, body_system=body_system,
                                 institution=institution, template=template, sampling=sampling, priority=priority,
                                 client_request_id=client_request_id)
        deadline = c.deadline_after(self._timeout if timeout is None else timeout)
        attempt = 0
        while True:
            call = self._rpc["stream"](req, timeout=c.time_left(deadline, attempt), metadata=self._metadata)
            got_text = False
            finished = False
            try:
                async for msg in call:
                    if msg.WhichOneof("event") == "delta":
                        got_text = True
                        yield msg.delta
                    else:
                        yield msg.final
                finished = True
                return
            except grpc.RpcError as e:
                finished = True
                if got_text:
                    raise from_rpc_error(e, attempt + 1) from None
                await asyncio.sleep(c.retry_pause(self._retry, self._rng, e, attempt, deadline))
            finally:
                if not finished:
                    call.cancel()
            attempt += 1

    async def score(self, findings: str, candidate: str, reference: Optional[str] = None, *,
                    language: c.EnumArg = None, modality: c.EnumArg = None, body_system: c.EnumArg = None,
                    institution: Optional[str] = None, template: Optional[str] = None, priority: c.EnumArg = None,
                    per_token_logprobs: bool = False, rouge_mode: c.EnumArg = None, rouge_segmenter: c.EnumArg = None,
                    client_request_id: Optional[str] = None, timeout: Optional[float] = None) -> pb.ScoreResponse:
        req = c.score_request(findings, candidate, reference, language=language, modality=modality,
                              body_system=body_system, institution=institution, template=template,
                              priority=priority, per_token_logprobs=per_token_logprobs, rouge_mode=rouge_mode,
                              rouge_segmenter=rouge_segmenter, client_request_id=client_request_id)
        return await self._unary("score", req, timeout)

    async def health(self, service: str = c.SERVICE, *, timeout: Optional[float] = None) -> str:
        try:
            r = await self._rpc["health"](c.health_request(service), timeout=timeout or self._timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return c.serving_status_name(r)

    async def _unary(self, name: str, request: Any, timeout: Optional[float]) -> Any:
        deadline = c.deadline_after(self._timeout if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                return await self._rpc[name](request, timeout=c.time_left(deadline, attempt), metadata=self._metadata)
            except grpc.RpcError as e:
                await asyncio.sleep(c.retry_pause(self._retry, self._rng, e, attempt, deadline))
            attempt += 1
