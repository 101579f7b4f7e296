"""Exceptions: every failed call raises a ChatradioError carrying the gRPC status code."""
from typing import Dict, Optional, Type

import grpc


class ChatradioError(Exception):
    """A call failed. `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, *, attempts: int = 1):
        super().__init__("%s: %s" % (code.name, details))
        self.code = code
        self.details = details
        self.attempts = attempts


class InvalidArgument(ChatradioError):
    """The request was refused as malformed (empty findings, out-of-range sampling...)."""


class NotFound(ChatradioError):
    """An unknown template id."""


class Unauthenticated(ChatradioError):
    """Missing or wrong bearer token."""


class PermissionDenied(ChatradioError):
    """The server refused the caller."""


class ResourceExhausted(ChatradioError):
    """The server's queue was full (retried before this is raised)."""


class Unavailable(ChatradioError):
    """No server could take the call: loading, draining or unreachable (retried first)."""


class DeadlineExceeded(ChatradioError):
    """The call's deadline passed."""


class FailedPrecondition(ChatradioError):
    """The server lacks something the request needs (e.g. jieba's dictionary)."""


class Cancelled(ChatradioError):
    """The call was cancelled."""


class Internal(ChatradioError):
    """The server failed while serving the call."""


_BY_CODE: Dict[grpc.StatusCode, Type[ChatradioError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(err: grpc.RpcError, attempts: int = 1) -> ChatradioError:
    """The exception for a failed call (grpc.RpcError or grpc.aio.AioRpcError)."""
    code: Optional[grpc.StatusCode] = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    code = code or grpc.StatusCode.UNKNOWN
    return _BY_CODE.get(code, ChatradioError)(code, details or "", attempts=attempts)
