"""The blocking client."""
import random
import time
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import grpc

from . import _common as c
from ._proto.chatradio.v1 import impression_service_pb2 as pb
from .errors import from_rpc_error

StreamEvent = Union[str, pb.GenerateImpressionResponse]


class Client:
    """A connection to one or more chatradio servers.

        with Client("localhost:50051") as client:
            r = client.impression("The lungs are clear.", language="en", modality="xr")
            print(r.impression, r.finish_reason)

    target: "host:port", any gRPC target ("dns:///name:port" balances over
    every address the name has), or a list of "host:port" (balanced per
    request); None = $CHATRADIO_TARGET or localhost:50051.
    token: bearer token (None = $CHATRADIO_TOKEN / $CHATRADIO_TOKEN_FILE).
    tls: None = from $CHATRADIO_TLS_* (plaintext when unset), False, True
    (system roots) or a TLS(ca=, cert=, key=, server_name=).
    timeout: default deadline in seconds of each call, retries included.
    retry: RetryPolicy (NO_RETRY to turn retries off).
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
            self._channel = grpc.insecure_channel(p.target, options=p.options)
        else:
            self._channel = grpc.secure_channel(p.target, p.credentials, options=p.options)
        self._rpc = c.bind_methods(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def impression(self, findings: str, *, language: c.EnumArg = None, modality: c.EnumArg = None,
                   body_system: c.EnumArg = None, institution: Optional[str] = None, template: Optional[str] = None,
                   sampling: c.SamplingArg = None, priority: c.EnumArg = None,
                   client_request_id: Optional[str] = None,
                   timeout: Optional[float] = None) -> pb.GenerateImpressionResponse:
        """The impression for `findings`. Keywords: language, modality,
        body_system, institution, template, sampling (Sampling, "paper" or
        "greedy"), priority ("routine"/"stat"), client_request_id."""
        req = c.generate_request(findings, language=language, modality=modality, body_system=body_system,
                                 institution=institution, template=template, sampling=sampling, priority=priority,
                                 client_request_id=client_request_id)
        return self._unary("generate", req, timeout)

    def stream_impression(self, findings: str, *, language: c.EnumArg = None, modality: c.EnumArg = None,
                          body_system: c.EnumArg = None, institution: Optional[str] = None,
                          template: Optional[str] = None, sampling: c.SamplingArg = None, priority: c.EnumArg = None,
                          client_request_id: Optional[str] = None,
                          timeout: Optional[float] = None) -> Iterator[StreamEvent]:
        """Text deltas (str) as they are generated, then the summary
        (GenerateImpressionResponse, whose .impression is the whole text).
        Retried only while no text has arrived. Closing the iterator early
        cancels the call on the server."""
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
                for msg in call:
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
                time.sleep(c.retry_pause(self._retry, self._rng, e, attempt, deadline))
            finally:
                if not finished:
                    call.cancel()
            attempt += 1

    def score(self, findings: str, candidate: str, reference: Optional[str] = None, *, language: c.EnumArg = None,
              modality: c.EnumArg = None, body_system: c.EnumArg = None, institution: Optional[str] = None,
              template: Optional[str] = None, priority: c.EnumArg = None, per_token_logprobs: bool = False,
              rouge_mode: c.EnumArg = None, rouge_segmenter: c.EnumArg = None,
              client_request_id: Optional[str] = None, timeout: Optional[float] = None) -> pb.ScoreResponse:
        """Log-probability of `candidate` given `findings`, and ROUGE against
        `reference` when given. Keywords: as impression(), plus
        per_token_logprobs, rouge_segmenter ("char"/"jieba"), rouge_mode."""
        req = c.score_request(findings, candidate, reference, language=language, modality=modality,
                              body_system=body_system, institution=institution, template=template,
                              priority=priority, per_token_logprobs=per_token_logprobs, rouge_mode=rouge_mode,
                              rouge_segmenter=rouge_segmenter, client_request_id=client_request_id)
        return self._unary("score", req, timeout)

    def health(self, service: str = c.SERVICE, *, timeout: Optional[float] = None) -> str:
        """The server's health for `service`: "SERVING", "NOT_SERVING"...
        Not retried: it reports the state right now."""
        try:
            r = self._rpc["health"](c.health_request(service), timeout=timeout or self._timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return c.serving_status_name(r)

    def _unary(self, name: str, request: Any, timeout: Optional[float]) -> Any:
        deadline = c.deadline_after(self._timeout if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                return self._rpc[name](request, timeout=c.time_left(deadline, attempt), metadata=self._metadata)
            except grpc.RpcError as e:
                time.sleep(c.retry_pause(self._retry, self._rng, e, attempt, deadline))
            attempt += 1
