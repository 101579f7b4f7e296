"""Python client for chatradio's gRPC service (chatradio.v1.ImpressionService).

    from chatradio_client import Client
    with Client("localhost:50051") as client:
        print(client.impression("The lungs are clear.", language="en").impression)

Responses are the protobuf messages of proto/chatradio/v1/impression_service.proto
(`chatradio_client.pb`). Failed calls raise ChatradioError subclasses carrying
the gRPC status code.
"""
from ._common import NO_RETRY, TLS, RetryPolicy, Sampling
from ._proto.chatradio.v1 import impression_service_pb2 as pb
from .aio import AsyncClient
from .client import Client
from .errors import (Cancelled, ChatradioError, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument,
                     NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable)

__all__ = ["Client", "AsyncClient", "TLS", "Sampling", "RetryPolicy", "NO_RETRY", "pb",
           "ChatradioError", "InvalidArgument", "NotFound", "Unauthenticated", "PermissionDenied",
           "ResourceExhausted", "Unavailable", "DeadlineExceeded", "FailedPrecondition", "Cancelled", "Internal"]
