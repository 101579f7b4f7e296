#!/usr/bin/env python3
"""Seed corpus of fuzz_requests (targets/requests.cpp): real reports from
../shared/data as serialized chatradio.v1 requests, each file one selector byte
(bit 0: Score, else GenerateImpression; the other bits pick server settings,
see the target) followed by the request's wire bytes.

    request_seeds.py OUT_DIR     (run.sh calls it through "// fuzz-seed-command:")

The protobuf wire format is written by hand (field numbers of
proto/chatradio/v1/impression_service.proto): no generated code, no
dependency beyond the standard library. Writes nothing, and says so, when
../shared is absent. The files hold report text: they stay in the build
folder and are never printed.
"""
import csv
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "data")
ROWS_PER_SET = 12


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def f_varint(num, v):
    return varint(num << 3) + varint(v)


def f_bytes(num, b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return varint((num << 3) | 2) + varint(len(b)) + b


def f_float(num, v):
    return varint((num << 3) | 5) + struct.pack("<f", v)


def context(i, language):
    # ReportContext: language 1, modality 2, body_system 3, institution_id 4, template_id 5.
    msg = f_varint(1, language if i % 3 else 1) + f_varint(2, i % 7) + f_varint(3, i % 7)
    msg += f_bytes(4, "hospital-%d" % i)
    if i % 4 == 1:
        msg += f_bytes(5, ("zh" if language == 2 else "en") + "-concise")
    elif i % 4 == 2:
        msg += f_bytes(5, "en-structured")  # wrong language for Chinese reports
    return msg


def sampling(i):
    # SamplingParams: preset 1, max_tokens 2, temperature 3, top_k 4, top_p 5, repetition_penalty 6, seed 7.
    msg = f_varint(1, i % 3)
    if i % 2:
        msg += f_varint(2, [1, 64, 512, 4000][i % 4])
    if i % 3 == 1:
        msg += f_float(3, 0.7) + f_varint(4, 40) + f_float(5, 0.9) + f_float(6, 1.1) + f_varint(7, 1234567 + i)
    return msg


def generate(i, findings, language):
    # GenerateImpressionRequest: findings 1, context 2, sampling 3, priority 4, client_request_id 5.
    return (f_bytes(1, findings) + f_bytes(2, context(i, language)) + f_bytes(3, sampling(i)) + f_varint(4, i % 3)
            + f_bytes(5, "seed-%d" % i))


def score(i, findings, impression, reference, language):
    # ScoreRequest: findings 1, candidate 2, reference 3, context 4, priority 5,
    # client_request_id 6, per_token_logprobs 7, rouge_segmenter 8, rouge_mode 9.
    msg = f_bytes(1, findings) + f_bytes(2, impression) + f_bytes(4, context(i, language)) + f_varint(5, i % 3)
    if i % 5:
        msg += f_bytes(3, reference)
    return msg + f_bytes(6, "score-%d" % i) + f_varint(7, i % 2) + f_varint(8, i % 5) + f_varint(9, i % 3)


def rows(path, findings_col, impression_col):
    with open(path, newline="", encoding="utf-8") as f:
        usable = [r for r in csv.DictReader(f) if r[findings_col].strip() and r[impression_col].strip()]
    step = max(1, len(usable) // ROWS_PER_SET)
    return [(r[findings_col], r[impression_col]) for r in usable[::step][:ROWS_PER_SET]]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: request_seeds.py OUT_DIR")
    out = sys.argv[1]
    sets = [(os.path.join(SHARED, "iu-xray", "indiana_reports.csv"), "findings", "impression", 3),
            (os.path.join(SHARED, "cov-ctr", "reports_ZH_EN.csv"), "findings", "impression", 2)]
    seeds = []
    for path, fcol, icol, language in sets:
        if not os.path.exists(path):
            print("request_seeds.py: %s is absent: no report seeds" % path, file=sys.stderr)
            continue
        pairs = rows(path, fcol, icol)
        for i, (findings, impression) in enumerate(pairs):
            reference = pairs[(i + 1) % len(pairs)][1]
            seeds.append(bytes([i & 0xFE]) + generate(i, findings, language))
            seeds.append(bytes([(i & 0xFE) | 1]) + score(i, findings, impression, reference, language))
    # Refusals the service words itself: bad UTF-8, an unknown long template
    # id, enum values out of range, a truncated message.
    seeds.append(b"\x00" + f_bytes(1, b"Heart \xc3\x28 normal."))
    seeds.append(b"\x00" + f_bytes(1, "Lungs clear.") + f_bytes(2, f_bytes(5, "x" * 300)))
    seeds.append(b"\x01" + f_bytes(1, "Lungs clear.") + f_bytes(2, "No acute disease.") + f_varint(8, 9) + f_varint(9, 7))
    seeds.append(b"\x00" + f_bytes(1, "Lungs clear.") + f_varint(4, 5) + f_bytes(3, f_varint(1, 9)))
    seeds.append(b"\x00" + f_bytes(1, "Lungs clear.")[:-3])
    for n, seed in enumerate(seeds):
        with open(os.path.join(out, "request-%d" % n), "wb") as f:
            f.write(seed)


if __name__ == "__main__":
    main()
