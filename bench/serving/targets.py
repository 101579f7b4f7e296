"""The two kinds of server the load generator drives, behind one coroutine:

    await target.send(request, result)  # fills `result` in; never raises for a failed call

- GrpcTarget: chatradio-server's StreamImpression (findings in, text deltas
  out, then a final message with token counts and server-side timings). Stubs
  are generated from proto/ at start-up into a temporary folder (with
  tests/common/grpc_testing.py's make_stubs), so the client speaks exactly proto/'s contract.
- OpenAITarget: an OpenAI-compatible streaming completions endpoint
  (llama.cpp's llama-server `/v1/completions`, `stream: true`), sent the prompt
  as token ids with `ignore_eos` and `n_predict`, over plain asyncio HTTP/1.1
  (no HTTP client package needed beyond what the service tests install).

Times are client-side, from just before the request is written: what a user sees.
"""
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field

# Stub generation is the tests' (tests/common/grpc_testing.py), shared
# rather than copied so every Python client compiles proto/ the same way.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/common"))
from grpc_testing import make_stubs  # noqa: E402


@dataclass
class Request:
    index: int
    findings: str
    prompt_ids: list  # BOS + rendered prompt, or None when no tokenizer was given
    max_tokens: int


@dataclass
class Result:
    index: int
    arrival_s: float  # scheduled arrival, seconds from the start of the run
    sent_s: float  # when it was actually sent (lags arrival when the client falls behind)
    end_s: float = None  # when the call ended, ok or not (same clock)
    code: str = "OK"  # gRPC status name, or "HTTP_<status>" / "NETWORK" for the peer
    ttft_s: float = None
    e2e_s: float = None
    itl_s: list = field(default_factory=list)  # gaps between successive streamed pieces
    output_tokens: int = 0
    prompt_tokens: int = None  # as the server counted them
    queue_s: float = None  # server-side, when the response carries it
    finish: str = None


class GrpcTarget:
    kind = "grpc"

    def __init__(self, address, stubs_dir, proto_root, template_id, lang, modality, body_system, sampling, channels,
                 timeout_s):
        import grpc
        pb, pbg, _, _ = make_stubs(proto_root, stubs_dir)
        self.grpc, self.pb = grpc, pb
        self.channels = [grpc.aio.insecure_channel(address) for _ in range(channels)]
        self.stubs = [pbg.ImpressionServiceStub(c) for c in self.channels]
        self.context = pb.ReportContext(language=pb.Language.Value("LANGUAGE_" + lang.upper()),
                                        modality=pb.Modality.Value("MODALITY_" + modality.replace("-", "_")),
                                        body_system=pb.BodySystem.Value("BODY_SYSTEM_" + body_system.upper()),
                                        template_id=template_id, institution_id="bench-serving")
        self.preset = pb.SamplingParams.PRESET_GREEDY if sampling == "greedy" else pb.SamplingParams.PRESET_PAPER
        self.timeout_s = timeout_s

    async def send(self, req, result):
        pb = self.pb
        msg = pb.GenerateImpressionRequest(
            findings=req.findings, context=self.context,
            sampling=pb.SamplingParams(preset=self.preset, max_tokens=req.max_tokens, seed=req.index),
            client_request_id="bench-%d" % req.index)
        start = time.perf_counter()
        last = None
        try:
            call = self.stubs[req.index % len(self.stubs)].StreamImpression(msg, timeout=self.timeout_s)
            async for m in call:
                now = time.perf_counter()
                if m.HasField("delta"):
                    if last is None:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
                else:
                    f = m.final
                    result.e2e_s = now - start
                    result.output_tokens = f.tokens.generated_tokens
                    result.prompt_tokens = f.tokens.prompt_tokens
                    result.queue_s = f.timings.queue_seconds
                    result.finish = pb.FinishReason.Name(f.finish_reason)
                    if result.ttft_s is None:  # nothing streamed (empty impression)
                        result.ttft_s = result.e2e_s
        except self.grpc.aio.AioRpcError as e:
            result.code = e.code().name
        if result.code == "OK" and result.e2e_s is None:
            result.code = "NO_FINAL_MESSAGE"

    async def close(self):
        for c in self.channels:
            await c.close()


class OpenAITarget:
    kind = "openai"

    def __init__(self, address, sampling, cache_prompt, timeout_s):
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.sampling = sampling
        self.cache_prompt = cache_prompt
        self.timeout_s = timeout_s

    def body(self, req):
        b = {"prompt": req.prompt_ids, "max_tokens": req.max_tokens, "n_predict": req.max_tokens,
             "ignore_eos": True, "stream": True, "cache_prompt": self.cache_prompt, "seed": req.index}
        if self.sampling == "greedy":
            b["temperature"] = 0.0
        else:  # PRESET_PAPER's settings
            b.update({"temperature": 1.0, "top_k": 50, "top_p": 1.0})
        return json.dumps(b).encode()

    async def send(self, req, result):
        try:
            await asyncio.wait_for(self._send(req, result), self.timeout_s)
        except asyncio.TimeoutError:
            result.code = "DEADLINE_EXCEEDED"
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            result.code = "NETWORK"
            result.finish = type(e).__name__

    async def _send(self, req, result):
        body = self.body(req)
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Accept: text/event-stream\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                         % (self.host.encode(), len(body)) + body)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            if status != 200:
                result.code = "HTTP_%d" % status
                return
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            last, pending, pieces = None, b"", 0
            async for data in _body_parts(reader, chunked):
                pending += data
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data: "):
                            continue
                        payload = line[6:].strip()
                        if payload == b"[DONE]":
                            result.e2e_s = time.perf_counter() - start
                            break
                        j = json.loads(payload)
                        if "error" in j:
                            result.code = "SERVER_ERROR"
                            return
                        now = time.perf_counter()
                        choice = (j.get("choices") or [{}])[0]
                        if choice.get("text"):
                            pieces += 1
                            if last is None:
                                result.ttft_s = now - start
                            else:
                                result.itl_s.append(now - last)
                            last = now
                        if choice.get("finish_reason"):
                            result.finish = choice["finish_reason"]
                        if "usage" in j:
                            result.output_tokens = j["usage"].get("completion_tokens", pieces)
                            result.prompt_tokens = j["usage"].get("prompt_tokens")
            if result.e2e_s is None:
                result.code = "NO_FINAL_MESSAGE"
            elif not result.output_tokens:
                result.output_tokens = pieces
            if result.ttft_s is None:
                result.ttft_s = result.e2e_s
        finally:
            writer.close()


async def _body_parts(reader, chunked):
    """The body's bytes as they arrive (HTTP/1.1 chunked or until close)."""
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF
