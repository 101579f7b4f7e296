"""chatradio-client: call a chatradio server from the command line.

    chatradio-client impression "The lungs are clear." --language en
    chatradio-client stream --file findings.txt --greedy --max-tokens 64
    echo "findings" | chatradio-client score --candidate "No acute disease." --reference "Normal."
    chatradio-client health --target host:50051

Findings come from the argument, --file FILE, or stdin. --json prints the
response as JSON (stream: one JSON line per event). Exit codes: 0 OK, 1 the
call failed (the gRPC code and message go to stderr), 2 bad usage; health
exits 3 when the server is reachable but not SERVING.
"""
import argparse
import json
import sys
from typing import Any, List, Optional

from google.protobuf import json_format

from ._common import TLS, Sampling
from .client import Client
from .errors import ChatradioError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_SERVING = 3


def to_dict(msg: Any) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def add_connection_args(ap: argparse.ArgumentParser) -> None:
    """Options shared with chatradio-eval."""
    g = ap.add_argument_group("connection (defaults from CHATRADIO_* environment variables)")
    g.add_argument("--target", action="append", metavar="HOST:PORT",
                   help="server address; repeat (or comma-separate) to balance over several; "
                        "default $CHATRADIO_TARGET or localhost:50051")
    g.add_argument("--token", help="bearer token (default $CHATRADIO_TOKEN or the file $CHATRADIO_TOKEN_FILE)")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    g.add_argument("--tls-ca", metavar="PEM", help="roots to trust (implies TLS; default $CHATRADIO_TLS_CA)")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS ($CHATRADIO_TLS_CERT)")
    g.add_argument("--tls-key", metavar="PEM", help="its private key ($CHATRADIO_TLS_KEY)")
    g.add_argument("--tls-server-name", metavar="NAME", help="name to verify in the server's certificate")
    g.add_argument("--timeout", type=float, default=300.0, help="deadline per call in seconds, retries included")


def connection_kwargs(a: argparse.Namespace) -> dict:
    tls: Any = None  # from the environment
    if a.tls or a.tls_ca or a.tls_cert or a.tls_key or a.tls_server_name:
        env = TLS.from_env() or TLS()
        tls = TLS(ca=a.tls_ca or env.ca, cert=a.tls_cert or env.cert, key=a.tls_key or env.key,
                  server_name=a.tls_server_name or env.server_name)
    target: Any = None
    if a.target:
        target = [t.strip() for arg in a.target for t in arg.split(",") if t.strip()]
    return {"target": target, "token": a.token, "tls": tls, "timeout": a.timeout}


def add_context_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("report context")
    g.add_argument("--language", help="zh, en or auto (default: detected)")
    g.add_argument("--modality", help="ct, mr, xr, us, pet-ct, other")
    g.add_argument("--body-system", help="chest, abdomen, musculoskeletal, head, maxillofacial-neck, other")
    g.add_argument("--institution", help="site id (logs and metrics only)")
    g.add_argument("--template", help="template id (default: the server's for language and body system)")
    g.add_argument("--priority", help="routine or stat")


def context_kwargs(a: argparse.Namespace) -> dict:
    return {"language": a.language, "modality": a.modality, "body_system": a.body_system,
            "institution": a.institution, "template": a.template, "priority": a.priority}


def read_text(arg: Optional[str], path: Optional[str], what: str) -> str:
    if arg is not None and path is not None:
        raise SystemExit("chatradio-client: give the %s as an argument or with a file, not both" % what)
    if path is not None:
        with open(sys.stdin.fileno() if path == "-" else path, encoding="utf-8", closefd=path != "-") as f:
            return f.read()
    if arg is not None:
        return arg
    if sys.stdin.isatty():
        raise SystemExit("chatradio-client: no %s: give it as an argument, with --file, or on stdin" % what)
    return sys.stdin.read()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chatradio-client", description=__doc__.split("\n")[0],
                                 epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("impression", "generate the impression for the findings"),
                        ("stream", "the same, printing the text as it is generated"),
                        ("score", "log-probability of a candidate impression, and ROUGE against a reference")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("findings", nargs="?", help="the findings text (default: --file or stdin)")
        p.add_argument("--file", help="read the findings from FILE ('-' = stdin)")
        p.add_argument("--json", action="store_true", help="print the response as JSON")
        p.add_argument("--request-id", help="client_request_id, echoed back and logged")
        add_connection_args(p)
        add_context_args(p)
        if name == "score":
            p.add_argument("--candidate", help="impression to score")
            p.add_argument("--candidate-file")
            p.add_argument("--reference", help="reference impression for ROUGE")
            p.add_argument("--reference-file")
            p.add_argument("--per-token", action="store_true", help="log-probability of every token")
            p.add_argument("--rouge-mode", help="chinese-compat (rouge_chinese 1.0.3; the server's default) or lin "
                                                "(rouge-score); docs/rouge.md")
            p.add_argument("--rouge-segmenter", help="char, jieba or jieba-no-hmm (default: the mode's)")
        else:
            g = p.add_argument_group("sampling (unset: the server's default preset)")
            g.add_argument("--preset", help="paper (temperature 1, top-k 50, top-p 1, max 512) or greedy")
            g.add_argument("--greedy", action="store_true", help="same as --preset greedy")
            g.add_argument("--max-tokens", type=int)
            g.add_argument("--temperature", type=float)
            g.add_argument("--top-k", type=int)
            g.add_argument("--top-p", type=float)
            g.add_argument("--repetition-penalty", type=float)
            g.add_argument("--seed", type=int)
    p = sub.add_parser("health", help="the server's health (exit 0 when SERVING, 3 otherwise)")
    p.add_argument("--service", default="chatradio.v1.ImpressionService", help="service name ('' = the server)")
    p.add_argument("--json", action="store_true")
    add_connection_args(p)
    return ap


def run(a: argparse.Namespace) -> int:
    with Client(**connection_kwargs(a)) as client:
        if a.command == "health":
            status = client.health(a.service)
            print(json.dumps({"status": status}) if a.json else status)
            return 0 if status == "SERVING" else EXIT_NOT_SERVING
        findings = read_text(a.findings, a.file, "findings")
        kw = context_kwargs(a)
        kw["client_request_id"] = a.request_id
        if a.command == "score":
            candidate = read_text(a.candidate, a.candidate_file, "candidate (--candidate)")
            reference = (read_text(a.reference, a.reference_file, "reference")
                         if a.reference is not None or a.reference_file else None)
            r = client.score(findings, candidate, reference, per_token_logprobs=a.per_token,
                             rouge_segmenter=a.rouge_segmenter, rouge_mode=a.rouge_mode, **kw)
            if a.json:
                print(json.dumps(to_dict(r), ensure_ascii=False))
            else:
                print("logprob %.4f (mean %.4f, perplexity %.3f, %d tokens)" %
                      (r.total_logprob, r.mean_logprob, r.perplexity, r.candidate_tokens))
                if r.HasField("rouge"):
                    for n in ("rouge1", "rouge2", "rouge_l"):
                        s = getattr(r.rouge, n)
                        print("%-8s P %.4f R %.4f F %.4f" % (n, s.precision, s.recall, s.f1))
                for t in r.token_logprobs:
                    print("%8.4f %6d %s" % (t.logprob, t.token_id, t.token))
            return 0
        kw["sampling"] = Sampling(preset="greedy" if a.greedy else a.preset, max_tokens=a.max_tokens,
                                  temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                                  repetition_penalty=a.repetition_penalty, seed=a.seed)
        if a.command == "impression":
            r = client.impression(findings, **kw)
            print(json.dumps(to_dict(r), ensure_ascii=False) if a.json else r.impression)
            return 0
        for ev in client.stream_impression(findings, **kw):
            if isinstance(ev, str):
                if a.json:
                    print(json.dumps({"delta": ev}, ensure_ascii=False), flush=True)
                else:
                    sys.stdout.write(ev)
                    sys.stdout.flush()
            elif a.json:
                print(json.dumps({"final": to_dict(ev)}, ensure_ascii=False))
            else:
                sys.stdout.write("\n")
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return run(a)
    except ChatradioError as e:
        print("chatradio-client: %s: %s" % (e.code.name, e.details), file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError) as e:
        print("chatradio-client: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
