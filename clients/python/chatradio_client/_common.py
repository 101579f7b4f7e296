"""What Client and AsyncClient share: configuration from arguments or the
environment, channel construction parameters, request building and the retry
policy. Nothing here does I/O on a channel."""
import ipaddress
import json
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from ._proto.chatradio.v1 import impression_service_pb2 as pb
from ._proto.grpc.health.v1 import health_pb2
from .errors import DeadlineExceeded, from_rpc_error

SERVICE = "chatradio.v1.ImpressionService"
METHOD_GENERATE = "/%s/GenerateImpression" % SERVICE
METHOD_STREAM = "/%s/StreamImpression" % SERVICE
METHOD_SCORE = "/%s/Score" % SERVICE
METHOD_HEALTH = "/grpc.health.v1.Health/Check"

DEFAULT_TARGET = "localhost:50051"
# Generation on a loaded CPU can take minutes for a 7B model; callers that
# want less pass timeout=.
DEFAULT_TIMEOUT_S = 300.0

# Per-request balancing over every address a target resolves to (a DNS name
# with many A records, a headless Service, or an ipv4:a,b list), and gRPC's
# client-side health checking (a Health.Watch stream per server): a server
# that loads its model or drains reports NOT_SERVING and round_robin stops
# picking it at once, before any call of ours meets its UNAVAILABLE.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                              "healthCheckConfig": {"serviceName": SERVICE}})

Target = Union[str, Sequence[str]]


@dataclass(frozen=True)
class TLS:
    """TLS settings. ca: PEM file of the roots to trust (None = the system's);
    cert + key: a client certificate for mutual TLS; server_name: the name to
    verify in the server's certificate when it differs from the target's host."""
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    server_name: Optional[str] = None

    @staticmethod
    def from_env(env: Mapping[str, str] = os.environ) -> Optional["TLS"]:
        """CHATRADIO_TLS_CA / _CERT / _KEY / _SERVER_NAME; CHATRADIO_TLS=1 for TLS
        with the system roots. None when none is set (plaintext)."""
        ca, cert, key = env.get("CHATRADIO_TLS_CA"), env.get("CHATRADIO_TLS_CERT"), env.get("CHATRADIO_TLS_KEY")
        name = env.get("CHATRADIO_TLS_SERVER_NAME")
        if not (ca or cert or key or name or env.get("CHATRADIO_TLS", "") in ("1", "true", "yes")):
            return None
        return TLS(ca=ca or None, cert=cert or None, key=key or None, server_name=name or None)

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise ValueError("mutual TLS needs both a client certificate and its key")

        def read(path: Optional[str]) -> Optional[bytes]:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; unset fields take the preset's value on the server.
    preset: "paper" (temperature 1.0, top-k 50, top-p 1.0, max 512), "greedy",
    or None for the server's default."""
    preset: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None

    @staticmethod
    def greedy(max_tokens: Optional[int] = None) -> "Sampling":
        return Sampling(preset="greedy", max_tokens=max_tokens)

    @staticmethod
    def paper(seed: Optional[int] = None, max_tokens: Optional[int] = None) -> "Sampling":
        return Sampling(preset="paper", seed=seed, max_tokens=max_tokens)

    def to_proto(self) -> pb.SamplingParams:
        p = pb.SamplingParams(preset=enum_value(pb.SamplingParams.Preset, "PRESET_", self.preset))
        for field in ("max_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"):
            v = getattr(self, field)
            if v is not None:
                setattr(p, field, v)
        return p


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k (0-based) waits a uniform
    random time in [0, min(max_backoff, initial_backoff * multiplier**k)].
    Retried only: UNAVAILABLE (loading, draining, unreachable) and
    RESOURCE_EXHAUSTED (queue full) — both mean the server did no work — and,
    for streams, only before the first text arrived. The call's deadline
    bounds all attempts together."""
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_backoff, self.initial_backoff * self.multiplier ** attempt))

    def should_retry(self, code: Optional[grpc.StatusCode], attempt: int) -> bool:
        return code in self.RETRYABLE and attempt + 1 < self.max_attempts


NO_RETRY = RetryPolicy(max_attempts=1)


def enum_value(enum: Any, prefix: str, value: Union[None, int, str]) -> Any:
    """An enum value from None (0, the server's default), an int, or a name
    with or without the prefix, case-insensitive ("zh", "LANGUAGE_ZH", "pet-ct").
    (An int at run time; typed Any because the generated .pyi types each enum
    as its own wrapper class.)"""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    name = value.strip().upper().replace("-", "_").replace(" ", "_")
    if not name.startswith(prefix):
        name = prefix + name
    try:
        return enum.Value(name)
    except ValueError:
        known = [n[len(prefix):].lower() for n in enum.keys() if not n.endswith("UNSPECIFIED")]
        raise ValueError("unknown %s %r; known: %s" % (prefix.rstrip("_").lower(), value, ", ".join(known))) from None


def enum_name(enum: Any, prefix: str, value: int) -> str:
    """The short lower-case name of an enum value ("zh", "eos")."""
    try:
        return enum.Name(value)[len(prefix):].lower()
    except ValueError:
        return str(value)


EnumArg = Union[None, int, str]  # a short name ("zh", "pet-ct"), the proto name or number; None = unset
SamplingArg = Union[None, str, Sampling]  # a Sampling, "paper", "greedy"; None = the server's default


def context_proto(language: EnumArg = None, modality: EnumArg = None, body_system: EnumArg = None,
                  institution: Optional[str] = None, template: Optional[str] = None) -> pb.ReportContext:
    return pb.ReportContext(
        language=enum_value(pb.Language, "LANGUAGE_", language),
        modality=enum_value(pb.Modality, "MODALITY_", modality),
        body_system=enum_value(pb.BodySystem, "BODY_SYSTEM_", body_system),
        institution_id=institution or "",
        template_id=template or "")


def generate_request(findings: str, *, language: EnumArg = None, modality: EnumArg = None,
                     body_system: EnumArg = None, institution: Optional[str] = None, template: Optional[str] = None,
                     sampling: SamplingArg = None, priority: EnumArg = None,
                     client_request_id: Optional[str] = None) -> pb.GenerateImpressionRequest:
    if isinstance(sampling, str):
        sampling = Sampling(preset=sampling)
    return pb.GenerateImpressionRequest(
        findings=findings,
        context=context_proto(language, modality, body_system, institution, template),
        sampling=sampling.to_proto() if sampling is not None else None,
        priority=enum_value(pb.Priority, "PRIORITY_", priority),
        client_request_id=client_request_id or "")


def score_request(findings: str, candidate: str, reference: Optional[str] = None, *, language: EnumArg = None,
                  modality: EnumArg = None, body_system: EnumArg = None, institution: Optional[str] = None,
                  template: Optional[str] = None, priority: EnumArg = None, per_token_logprobs: bool = False,
                  rouge_mode: EnumArg = None, rouge_segmenter: EnumArg = None,
                  client_request_id: Optional[str] = None) -> pb.ScoreRequest:
    """rouge_mode: "chinese-compat" (rouge_chinese 1.0.3, the server's default) or
    "lin" (rouge-score); rouge_segmenter: "char", "jieba", "jieba-no-hmm" or None
    for the mode's default."""
    return pb.ScoreRequest(
        findings=findings, candidate_impression=candidate, reference_impression=reference or "",
        context=context_proto(language, modality, body_system, institution, template),
        priority=enum_value(pb.Priority, "PRIORITY_", priority),
        client_request_id=client_request_id or "", per_token_logprobs=per_token_logprobs,
        rouge_segmenter=enum_value(pb.ScoreRequest.Segmenter, "SEGMENTER_", rouge_segmenter),
        rouge_mode=enum_value(pb.RougeMode, "ROUGE_MODE_", rouge_mode))


def resolve_token(token: Optional[str], env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The bearer token: the argument, else CHATRADIO_TOKEN, else the first
    line of the file CHATRADIO_TOKEN_FILE names."""
    if token:
        return token
    if env.get("CHATRADIO_TOKEN"):
        return env["CHATRADIO_TOKEN"]
    path = env.get("CHATRADIO_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() or None
    return None


def _split_host_port(addr: str) -> Tuple[str, str]:
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, rest.lstrip(":")
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError("target %r has no port (host:port)" % addr)
    return host, port


def resolve_target(target: Optional[Target], env: Mapping[str, str] = os.environ) -> Tuple[str, Optional[str]]:
    """A gRPC target string and the TLS name to verify when it had to be
    rewritten. A single string is used as is (any gRPC target: host:port,
    dns:///name:port, ipv4:a:p,b:q ...). A list of host:port is resolved now
    into one ipv4:/ipv6: address list, because Python gRPC has no resolver for
    a list of names; round_robin then balances over all of them."""
    if target is None:
        target = env.get("CHATRADIO_TARGET") or DEFAULT_TARGET
    if isinstance(target, str):
        if "," in target and ":" in target.split(",")[0] and not target.startswith(("ipv4:", "ipv6:", "dns:")):
            target = [t.strip() for t in target.split(",") if t.strip()]
        else:
            return target, None
    targets = list(target)
    if not targets:
        raise ValueError("empty target list")
    if len(targets) == 1:
        return targets[0], None
    v4: List[str] = []
    v6: List[str] = []
    names = set()
    for t in targets:
        host, port = _split_host_port(t)
        try:
            ips = [str(ipaddress.ip_address(host))]
        except ValueError:
            names.add(host)
            ips = sorted({ai[4][0] for ai in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
        # A name with both families (localhost) is one server: take its IPv4.
        ip4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
        if ip4:
            v4 += ["%s:%s" % (ip, port) for ip in ip4]
        else:
            v6 += ["[%s]:%s" % (ip, port) for ip in ips]
    if v4 and v6:
        raise ValueError("the target list mixes IPv4 and IPv6-only servers, which one gRPC channel cannot "
                         "balance; give one family, or a DNS name (dns:///name:port)")
    server_name = names.pop() if len(names) == 1 else None
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6)), server_name


def channel_options(server_name: Optional[str]) -> List[Tuple[str, Any]]:
    opts: List[Tuple[str, Any]] = [
        ("grpc.service_config", _SERVICE_CONFIG),
        # Retries are ours (RetryPolicy): gRPC's own would double them.
        ("grpc.enable_retries", 0),
        # The server accepts pings every 10 s at most; this stays well above.
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 20000),
        # gRPC's reconnect backoff grows to 120 s by default: a server that
        # starts late or comes back would be missed by every retry until then.
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


@dataclass(frozen=True)
class ChannelParams:
    """Everything needed to open the channel, from arguments or the environment."""
    target: str
    credentials: Optional[grpc.ChannelCredentials]  # None: plaintext
    options: List[Tuple[str, Any]]
    metadata: Optional[Tuple[Tuple[str, str], ...]]


def channel_params(target: Optional[Target], token: Optional[str], tls: Union[None, bool, TLS],
                   options: Sequence[Tuple[str, Any]] = ()) -> ChannelParams:
    """tls: None = from the environment (TLS.from_env), False = plaintext,
    True = TLS with the system roots, or a TLS."""
    resolved, name = resolve_target(target)
    cfg = TLS.from_env() if tls is None else (TLS() if tls is True else (tls or None))
    if cfg is not None and cfg.server_name:
        name = cfg.server_name
    return ChannelParams(target=resolved,
                         credentials=cfg.credentials() if cfg is not None else None,
                         options=channel_options(name) + list(options),
                         metadata=call_metadata(resolve_token(token)))


def call_metadata(token: Optional[str]) -> Optional[Tuple[Tuple[str, str], ...]]:
    return (("authorization", "Bearer " + token),) if token else None


_METHODS: Dict[str, Tuple[str, str, Any, Any]] = {
    "generate": ("unary_unary", METHOD_GENERATE, pb.GenerateImpressionRequest, pb.GenerateImpressionResponse),
    "stream": ("unary_stream", METHOD_STREAM, pb.GenerateImpressionRequest, pb.StreamImpressionResponse),
    "score": ("unary_unary", METHOD_SCORE, pb.ScoreRequest, pb.ScoreResponse),
    "health": ("unary_unary", METHOD_HEALTH, health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse),
}


def bind_methods(channel: Any) -> Dict[str, Any]:
    """The multi-callables of a grpc or grpc.aio channel, by name (what a
    generated *_pb2_grpc stub would hold)."""
    return {name: getattr(channel, kind)(path, request_serializer=req.SerializeToString,
                                         response_deserializer=resp.FromString)
            for name, (kind, path, req, resp) in _METHODS.items()}


def deadline_after(timeout: float) -> float:
    return time.monotonic() + timeout


def time_left(deadline: float, attempts: int) -> float:
    """Seconds until `deadline`; DeadlineExceeded when none are left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while retrying", attempts=attempts)
    return left


def retry_pause(policy: RetryPolicy, rng: random.Random, err: grpc.RpcError, attempt: int, deadline: float) -> float:
    """How long to wait before retrying after `err` on attempt `attempt`
    (0-based); raises the mapped exception when the call must not be retried
    or the pause would pass the deadline."""
    pause = policy.backoff(attempt, rng)
    if not policy.should_retry(err.code(), attempt) or time.monotonic() + pause >= deadline:
        raise from_rpc_error(err, attempt + 1) from None
    return pause


def serving_status_name(response: Any) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def health_request(service: str) -> Any:
    return health_pb2.HealthCheckRequest(service=service)
