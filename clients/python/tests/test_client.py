"""chatradio_client against the real chatradio-server (unary, stream, score,
errors, retries, drain, TLS + token, two servers balanced, async, CLI).

    CHATRADIO_SERVER=build/server/service/chatradio-server \\
        PYTHONPATH=clients/python /usr/bin/python3 -m unittest discover -s clients/python/tests -p 'test_client.py'
"""
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import unittest

import grpc

from chatradio_client import (NO_RETRY, TLS, AsyncClient, ChatradioError, Client, DeadlineExceeded, InvalidArgument,
                              NotFound, RetryPolicy, Sampling, Unauthenticated, Unavailable, pb)
from server_fixture import Server, Pki, free_port, require_assets

FINDINGS = "The lungs are clear. No pleural effusion."
GREEDY = Sampling.greedy(max_tokens=24)
# Patient: generous for a loaded 2-core machine; retries spread over it.
TIMEOUT = 120.0
PATIENT = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.5)


class SharedServer(unittest.TestCase):
    """Tests that only need one plain server."""

    @classmethod
    def setUpClass(cls):
        require_assets(cls)
        cls.server = Server()
        cls.client = Client(cls.server.target, timeout=TIMEOUT, tls=False)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def test_health(self):
        self.assertEqual(self.client.health(), "SERVING")
        self.assertEqual(self.client.health(""), "SERVING")

    def test_unary(self):
        r = self.client.impression(FINDINGS, language="en", modality="xr", body_system="chest",
                                   institution="site-1", sampling=GREEDY, client_request_id="py-unary")
        self.assertTrue(r.impression)
        self.assertEqual(r.client_request_id, "py-unary")
        self.assertTrue(r.request_id)
        self.assertEqual(r.language, pb.LANGUAGE_EN)
        self.assertEqual(r.model.name, "stories260K")
        self.assertGreater(r.tokens.generated_tokens, 0)
        self.assertLessEqual(r.tokens.generated_tokens, 24)
        self.assertIn(r.finish_reason, (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_REPETITION))
        # Greedy is deterministic; a seeded sample is repeatable.
        self.assertEqual(self.client.impression(FINDINGS, sampling=GREEDY).impression, r.impression)
        seeded = Sampling.paper(seed=42, max_tokens=24)
        self.assertEqual(self.client.impression(FINDINGS, sampling=seeded).impression,
                         self.client.impression(FINDINGS, sampling=seeded).impression)

    def test_stream(self):
        events = list(self.client.stream_impression(FINDINGS, sampling=GREEDY))
        deltas, final = events[:-1], events[-1]
        self.assertTrue(deltas)
        self.assertTrue(all(isinstance(d, str) and d for d in deltas))
        self.assertIsInstance(final, pb.GenerateImpressionResponse)
        self.assertEqual("".join(deltas), final.impression)
        self.assertEqual(final.impression, self.client.impression(FINDINGS, sampling=GREEDY).impression)

    def test_stream_closed_early_cancels(self):
        it = self.client.stream_impression(FINDINGS, sampling=Sampling.greedy(max_tokens=400))
        self.assertIsInstance(next(it), str)
        it.close()  # cancels the call; the server answers later calls as usual
        self.assertTrue(self.client.impression(FINDINGS, sampling=GREEDY).impression)

    def test_score(self):
        r = self.client.score(FINDINGS, "No acute disease.", "No acute cardiopulmonary disease.",
                              per_token_logprobs=True, rouge_mode="lin")
        self.assertLess(r.total_logprob, 0)
        self.assertEqual(len(r.token_logprobs), r.candidate_tokens)
        self.assertAlmostEqual(sum(t.logprob for t in r.token_logprobs), r.total_logprob, places=3)
        self.assertTrue(r.HasField("rouge"))
        # Lin/rouge-score words: {no, acute, disease} vs {no, acute, cardiopulmonary, disease}.
        self.assertAlmostEqual(r.rouge.rouge1.precision, 1.0)
        self.assertAlmostEqual(r.rouge.rouge1.recall, 0.75)
        self.assertEqual(r.rouge_mode, pb.ROUGE_MODE_LIN)
        # The default mode is the rouge_chinese-compatible one, with jieba.
        zh = self.client.score("双肺纹理清晰。", "右肺上叶炎性病变", "右肺上叶炎性病变（符合病毒性肺炎）")
        self.assertEqual((zh.rouge_mode, zh.rouge_segmenter),
                         (pb.ROUGE_MODE_CHINESE_COMPAT, pb.ScoreRequest.SEGMENTER_JIEBA))
        same = self.client.score(FINDINGS, "No acute disease.", "No acute disease.")
        self.assertAlmostEqual(same.rouge.rouge_l.f1, 1.0, places=6)
        self.assertFalse(self.client.score(FINDINGS, "No acute disease.").HasField("rouge"))

    def test_errors_carry_status_codes(self):
        with self.assertRaises(InvalidArgument) as cm:
            self.client.impression("   ")
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("findings is empty", cm.exception.details)
        self.assertEqual(cm.exception.attempts, 1)  # never retried
        with self.assertRaises(InvalidArgument) as cm:
            self.client.impression(FINDINGS, sampling=Sampling(top_p=1.5))
        self.assertIn("top_p", cm.exception.details)
        with self.assertRaises(NotFound) as cm:
            self.client.impression(FINDINGS, template="no-such-template")
        self.assertEqual(cm.exception.code, grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(InvalidArgument):
            self.client.score(FINDINGS, "")
        with self.assertRaises(InvalidArgument):
            self.client.impression(FINDINGS, priority=7)
        # The deadline covers the call: far too short for 400 tokens.
        with self.assertRaises(DeadlineExceeded) as cm:
            self.client.impression(FINDINGS, sampling=Sampling.greedy(max_tokens=400), timeout=0.001)
        self.assertEqual(cm.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        with self.assertRaises(ValueError):
            self.client.impression(FINDINGS, language="klingon")
        self.assertTrue(issubclass(InvalidArgument, ChatradioError))

    def test_async_client(self):
        async def main():
            async with AsyncClient(self.server.target, timeout=TIMEOUT, tls=False) as client:
                self.assertEqual(await client.health(), "SERVING")
                unary = await client.impression(FINDINGS, sampling=GREEDY)
                events = [e async for e in client.stream_impression(FINDINGS, sampling=GREEDY)]
                self.assertEqual("".join(events[:-1]), events[-1].impression)
                self.assertEqual(events[-1].impression, unary.impression)
                many = await asyncio.gather(*(client.impression(FINDINGS, sampling=GREEDY) for _ in range(6)))
                self.assertEqual({r.impression for r in many}, {unary.impression})
                s = await client.score(FINDINGS, unary.impression, unary.impression)
                self.assertAlmostEqual(s.rouge.rouge1.f1, 1.0, places=6)
                with self.assertRaises(InvalidArgument):
                    await client.impression("")
        asyncio.run(main())

    def test_cli(self):
        env = dict(os.environ, CHATRADIO_TARGET=self.server.target)
        cli = [sys.executable, "-m", "chatradio_client"]

        def run(*args, stdin=None):
            return subprocess.run(cli + list(args), input=stdin, capture_output=True, text=True, env=env,
                                  timeout=TIMEOUT)

        r = run("impression", FINDINGS, "--greedy", "--max-tokens", "24")
        self.assertEqual(r.returncode, 0, r.stderr)
        expected = self.client.impression(FINDINGS, sampling=GREEDY).impression
        self.assertEqual(r.stdout, expected + "\n")
        r = run("stream", "--file", "-", "--greedy", "--max-tokens", "24", "--json", stdin=FINDINGS)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [__import__("json").loads(x) for x in r.stdout.splitlines()]
        self.assertEqual("".join(x["delta"] for x in lines[:-1]), lines[-1]["final"]["impression"])
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(FINDINGS)
            f.flush()
            r = run("score", "--file", f.name, "--candidate", "No acute disease.", "--reference", "No acute disease.",
                    "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"rouge"', r.stdout)
        r = run("health")
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"))
        r = run("impression", "", "--greedy")
        self.assertEqual(r.returncode, 1)
        self.assertIn("INVALID_ARGUMENT: findings is empty", r.stderr)
        r = run("impression", FINDINGS, "--modality", "xray-vision")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown modality", r.stderr)


class Retries(unittest.TestCase):
    def setUp(self):
        require_assets(self)

    def test_server_started_late(self):
        """UNAVAILABLE (nothing listening, then the model loading) is retried
        with backoff until the server is up."""
        port = free_port()
        result = {}

        def call():
            try:
                with Client("127.0.0.1:%d" % port, timeout=TIMEOUT, tls=False, retry=PATIENT) as c:
                    result["r"] = c.impression(FINDINGS, sampling=GREEDY)
            except Exception as e:  # reported by the assertion below
                result["e"] = e

        t = threading.Thread(target=call)
        t.start()
        with Client("127.0.0.1:%d" % port, timeout=TIMEOUT, tls=False, retry=NO_RETRY) as probe:
            with self.assertRaises(Unavailable):
                probe.impression(FINDINGS, sampling=GREEDY)
        with Server(port=port):
            t.join(TIMEOUT)
        self.assertNotIn("e", result)
        self.assertTrue(result["r"].impression)

    def test_overload_is_retried(self):
        """RESOURCE_EXHAUSTED (queue full) is retried; every request succeeds.
        Bursts repeat until the server has refused at least one, so the test
        holds however the machine schedules the threads."""
        with Server("--max-batch-size", "1", "--max-waiting", "1") as server:
            for _ in range(20):
                with Client(server.target, timeout=TIMEOUT, tls=False, retry=PATIENT) as client:
                    barrier = threading.Barrier(8)
                    out = []

                    def call():
                        barrier.wait()
                        out.append(client.impression(FINDINGS, sampling=Sampling.greedy(max_tokens=200)))

                    threads = [threading.Thread(target=call) for _ in range(8)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(TIMEOUT)
                    self.assertEqual(len(out), 8)
                if server.requests("GenerateImpression", "RESOURCE_EXHAUSTED") > 0:
                    break
            self.assertGreater(server.requests("GenerateImpression", "RESOURCE_EXHAUSTED"), 0)
            with Client(server.target, timeout=TIMEOUT, tls=False, retry=NO_RETRY) as client:
                self.assertTrue(client.impression(FINDINGS, sampling=GREEDY).impression)

    def test_no_retry_after_streamed_text(self):
        """A stream that fails after text arrived raises at once (attempts == 1)
        instead of starting over and repeating text."""
        for _ in range(5):
            with Server() as server:
                with Client(server.target, timeout=TIMEOUT, tls=False, retry=PATIENT) as client:
                    it = client.stream_impression(FINDINGS, sampling=Sampling(preset="paper", seed=1, max_tokens=400))
                    self.assertIsInstance(next(it), str)
                    server.proc.kill()
                    try:
                        for _ev in it:
                            pass
                    except ChatradioError as e:
                        self.assertEqual(e.attempts, 1)
                        return
            # The whole stream was already buffered before the kill: try again.
        self.fail("the stream always finished before the server was killed")

    def test_drain_moves_traffic_to_the_other_server(self):
        with Server("--drain-grace", "5") as a, Server() as b:
            with Client([a.target, b.target], timeout=TIMEOUT, tls=False) as client:
                for _ in range(6):
                    client.impression(FINDINGS, sampling=GREEDY)
                a.signal(signal.SIGTERM)
                a.wait_event("draining")
                before = b.requests("GenerateImpression")
                for _ in range(10):
                    self.assertTrue(client.impression(FINDINGS, sampling=GREEDY).impression)
                # All went to B: A's health watch took it out of the
                # rotation, and a call that met its UNAVAILABLE first was retried.
                self.assertEqual(b.requests("GenerateImpression") - before, 10)


class TwoServers(unittest.TestCase):
    def test_balanced_per_request(self):
        require_assets(self)
        with Server() as a, Server() as b:
            # A list of addresses, a list of names (resolved by the client),
            # and gRPC's own address-list syntax.
            for target in ([a.target, b.target], ["localhost:%d" % a.port, "localhost:%d" % b.port],
                           "ipv4:%s,%s" % (a.target, b.target)):
                before = (a.requests("GenerateImpression"), b.requests("GenerateImpression"))
                with Client(target, timeout=TIMEOUT, tls=False) as client:
                    for _ in range(10):
                        client.impression(FINDINGS, sampling=GREEDY)
                da = a.requests("GenerateImpression") - before[0]
                db = b.requests("GenerateImpression") - before[1]
                self.assertEqual(da + db, 10)
                self.assertGreater(da, 0, "server A got no traffic")
                self.assertGreater(db, 0, "server B got no traffic")


class Security(unittest.TestCase):
    def test_mtls_and_token(self):
        require_assets(self)
        pki = Pki()
        self.addCleanup(pki.cleanup)
        tokens = pki.path("tokens.txt")
        with open(tokens, "w") as f:
            f.write("# test tokens\nsecret-1\n")
        with Server("--tls-cert", pki.path("server.pem"), "--tls-key", pki.path("server.key"),
                    "--tls-client-ca", pki.path("ca.pem"), "--auth-token-file", tokens) as server:
            tls = TLS(ca=pki.path("ca.pem"), cert=pki.path("client.pem"), key=pki.path("client.key"))
            target = "localhost:%d" % server.port
            with Client(target, token="secret-1", tls=tls, timeout=TIMEOUT) as c:
                self.assertTrue(c.impression(FINDINGS, sampling=GREEDY).impression)
                self.assertEqual(c.health(), "SERVING")
            for token in (None, "wrong"):
                with Client(target, token=token, tls=tls, timeout=TIMEOUT) as c:
                    with self.assertRaises(Unauthenticated):
                        c.impression(FINDINGS, sampling=GREEDY)
            # No client certificate: the handshake fails (UNAVAILABLE, retried, then raised).
            with Client(target, token="secret-1", tls=TLS(ca=pki.path("ca.pem")), timeout=TIMEOUT,
                        retry=RetryPolicy(max_attempts=2)) as c:
                with self.assertRaises(Unavailable):
                    c.impression(FINDINGS, sampling=GREEDY)
            # Everything from the environment, the IP address verified as the certificate's localhost.
            env = {"CHATRADIO_TARGET": "127.0.0.1:%d" % server.port, "CHATRADIO_TOKEN": "secret-1",
                   "CHATRADIO_TLS_CA": pki.path("ca.pem"), "CHATRADIO_TLS_CERT": pki.path("client.pem"),
                   "CHATRADIO_TLS_KEY": pki.path("client.key"), "CHATRADIO_TLS_SERVER_NAME": "localhost"}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                with Client(timeout=TIMEOUT) as c:
                    self.assertTrue(c.impression(FINDINGS, sampling=GREEDY).impression)
                r = subprocess.run([sys.executable, "-m", "chatradio_client", "impression", FINDINGS, "--greedy",
                                    "--max-tokens", "8"], capture_output=True, text=True, timeout=TIMEOUT)
                self.assertEqual(r.returncode, 0, r.stderr)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


if __name__ == "__main__":
    unittest.main()
