#!/usr/bin/python3
"""Expected ids and decoded text from the real SentencePiece, for test_tokenizer.

Run with Debian's /usr/bin/python3 (python3-sentencepiece; see scripts/setup):

    spm_oracle.py --shared ../shared --out DIR --tokenizer NAME

NAME is one of the shipped tokenizers (llama2, chinese-llama2, stories260K) or
a small model trained here to reach what those never exercise ("trained-*":
no byte fallback, user-defined and UNUSED pieces, whitespace as suffix, no
dummy prefix). Writes into DIR:

    model_path        the tokenizer.model both sides load (one line)
    cases.bin         a count line, then per case:
                        label line, <len>\\n<text bytes>\\n, ids line,
                        <len>\\n<decoded bytes>\\n
                      then a count line and per random id sequence:
                        ids line, <len>\\n<decoded bytes>\\n

Texts: every findings/impression of IU X-ray, every findings/impression/
reports_En of COV-CTR, the llama.cpp vectors, edge cases and seeded random
Unicode (some with malformed UTF-8), long texts; plus random id sequences to
decode. Exit codes: 0 ok, 3 sentencepiece missing, 4 test assets missing,
anything else a bug.
"""

import argparse
import csv
import os
import random
import sys

try:
    import sentencepiece as spm
except ImportError:
    sys.stderr.write("python3-sentencepiece is not installed for /usr/bin/python3; run scripts/setup\n")
    sys.exit(3)

SHIPPED = {
    "llama2": "tokenizers/llama2/tokenizer.model",
    "chinese-llama2": "tokenizers/chinese-llama2/tokenizer.model",
    "stories260K": "models/stories260K/tokenizer.model",
}

# Trainer options of the models trained here; every one keeps the 'identity'
# normalizer, since NFKC charsmaps are rejected by design.
TRAINED = {
    "trained-unk-user": dict(vocab_size=400, byte_fallback=False, remove_extra_whitespaces=False,
                             user_defined_symbols=["XXXX", "<img>", "mm", "cm"]),
    "trained-suffix": dict(vocab_size=600, byte_fallback=True, treat_whitespace_as_suffix=True),
    "trained-no-prefix": dict(vocab_size=350, byte_fallback=False, add_dummy_prefix=False,
                              remove_extra_whitespaces=True),
}

CSV_COLUMNS = {
    "data/iu-xray/indiana_reports.csv": ["findings", "impression"],
    "data/cov-ctr/reports_ZH_EN.csv": ["findings", "impression", "reports_En"],
}
VECTORS = "tokenizers/llama-spm-vectors/ggml-vocab-llama-spm.gguf.inp"

EDGE_CASES = [
    "", " ", "  ", "\t", "\n", " a", "a ", "  a  b  ", "a\u3000b", "\u2581", " \u2581 ", "\u2581\u2581x",
    "<s>", "</s>", "<unk>", "<0x41>", "XXXX", "XXXXX", " XXXX cm", "<img><img>", "mmm", "\ufffd",
    "\U0001F600", "e\u0301", "\x00", "a\x00b", "a\u2581\u2581b", "x \u2581y", "\u2581\u2581\u2581 \u2581\u2581",
]
EDGE_BYTES = [b"\xff", b"a\xffb", b"\xe4\xbd", b"\xe4\xbd\xa0", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80",
              b"\x80\x80 x", b" \xf0\x9f\x98"]


def fail_assets(what):
    sys.stderr.write(f"test asset missing: {what} (see shared/README.md)\n")
    sys.exit(4)


def read_texts(shared):
    texts = []  # (label, bytes)
    for rel, columns in CSV_COLUMNS.items():
        path = os.path.join(shared, rel)
        if not os.path.exists(path):
            fail_assets(path)
        with open(path, newline="", encoding="utf-8") as f:
            for row_no, row in enumerate(csv.DictReader(f)):
                for col in columns:
                    texts.append((f"{rel} row {row_no} {col}", row[col].encode("utf-8")))
    path = os.path.join(shared, VECTORS)
    if not os.path.exists(path):
        fail_assets(path)
    with open(path, encoding="utf-8") as f:
        cases = f.read().split("\n__ggml_vocab_test__\n")[:-1]
    texts += [(f"llama-spm-vectors case {i}", c.encode("utf-8")) for i, c in enumerate(cases)]
    texts += [(f"edge case {i}", c.encode("utf-8")) for i, c in enumerate(EDGE_CASES)]
    texts += [(f"malformed utf-8 case {i}", b) for i, b in enumerate(EDGE_BYTES)]
    texts += random_texts(random.Random(20240601), 300)
    texts += long_texts(texts, random.Random(20240602))
    return texts


def long_texts(texts, rng):
    """Whole data sets run together: long inputs are where a merge queue that
    is wrong about stale pairs or word boundaries shows."""
    english = b" ".join(t for label, t in texts if label.startswith("data/iu-xray"))[:60000]
    chinese = b"\n".join(t for label, t in texts if label.startswith("data/cov-ctr"))[:30000]
    unicode = "".join(random_char(rng) for _ in range(8000)).encode("utf-8")
    return [("long english", english), ("long chinese", chinese), ("long random unicode", unicode)]


def random_char(rng):
    pick = rng.random()
    ranges = [  # (cumulative weight, code point ranges)
        (0.40, [(0x20, 0x7E)]),                        # ASCII
        (0.55, [(0x20, 0x20)]),                        # extra spaces, for runs
        (0.60, [(0x09, 0x0A), (0x0D, 0x0D), (0x01, 0x1F)]),  # tabs, newlines, C0 controls
        (0.72, [(0x4E00, 0x9FFF)]),                    # CJK
        (0.75, [(0x3400, 0x4DBF), (0xAC00, 0xD7A3)]),  # rarer CJK, Hangul
        (0.80, [(0x1F300, 0x1FAFF)]),                  # emoji
        (0.85, [(0x0300, 0x036F)]),                    # combining marks
        (0.92, [(0x00A0, 0x00FF), (0x0370, 0x04FF)]),  # Latin-1, Greek, Cyrillic
        (0.96, [(0x2000, 0x2BFF), (0xFFFD, 0xFFFD)]),  # punctuation, symbols, U+2581, U+FFFD
        (1.00, [(0xE000, 0xF8FF), (0x10000, 0x10FFFF)]),  # private use, astral
    ]
    for weight, spans in ranges:
        if pick < weight:
            lo, hi = rng.choice(spans)
            cp = rng.randint(lo, hi)
            return chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?"
    return "?"


def random_texts(rng, count):
    out = []
    for i in range(count):
        text = "".join(random_char(rng) for _ in range(rng.randint(0, 60))).encode("utf-8")
        if i % 10 == 9:  # malformed UTF-8: stray bytes spliced in
            raw = bytearray(text)
            for _ in range(rng.randint(1, 4)):
                raw.insert(rng.randint(0, len(raw)), rng.randint(0x80, 0xFF))
            text = bytes(raw)
        out.append((f"random case {i}", text))
    return out


def random_id_sequences(sp, rng, count):
    """Id sequences a model could generate: byte pieces (often the bytes of a
    real character, sometimes not), pieces with and without a leading U+2581,
    control and unknown ids, in any order. Decoding them checks spm's byte
    assembly and leading-space rules beyond what encoding ever produces."""
    size = sp.get_piece_size()
    byte_id = {int(sp.id_to_piece(i)[3:5], 16): i for i in range(size) if sp.is_byte(i)}
    special = [i for i in range(size) if sp.is_control(i) or sp.is_unknown(i)]
    spaced = [i for i in range(size) if sp.id_to_piece(i).startswith("\u2581")]
    normal = [i for i in range(size) if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    out = []
    for _ in range(count):
        ids, length = [], rng.randint(0, 30)
        while len(ids) < length:
            pick = rng.random()
            if byte_id and pick < 0.3:
                ids += [byte_id[b] for b in random_char(rng).encode("utf-8")]
            elif byte_id and pick < 0.45:
                ids.append(byte_id[rng.randint(0, 255)])
            elif pick < 0.55:
                ids.append(rng.choice(special))
            elif pick < 0.75 and spaced:
                ids.append(rng.choice(spaced))
            else:
                ids.append(rng.choice(normal))
        out.append(ids)
    return out


def fields(blob):
    """(number, wire type, raw bytes of the whole field, payload) of a protobuf message."""
    pos = 0
    while pos < len(blob):
        start = pos
        key, pos = varint(blob, pos)
        wire = key & 7
        if wire == 0:
            _, pos = varint(blob, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = varint(blob, pos)
            pos += n
        else:
            raise ValueError("unexpected wire type")
        yield key >> 3, wire, blob[start:pos]


def varint(blob, pos):
    value, shift = 0, 0
    while True:
        b = blob[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def encode_varint(v):
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def mark_unused(model, every):
    """Marks every `every`-th multi-character NORMAL piece UNUSED (type 5), so
    the oracle exercises spm's resegmentation. A later type field wins in
    protobuf, so appending one to the piece message is enough."""
    out = bytearray()
    normal_seen = 0
    for number, wire, raw in fields(model):
        if number == 1 and wire == 2:
            _, after_key = varint(raw, 0)
            _, body_start = varint(raw, after_key)
            body = raw[body_start:]
            piece, ptype = b"", 1
            for n, w, f in fields(body):
                if n == 1:
                    _, s = varint(f, 1)
                    piece = f[s:]
                elif n == 3:
                    ptype = varint(f, 1)[0]
            if ptype == 1 and len(piece.decode("utf-8")) > 1:
                normal_seen += 1
                if normal_seen % every == 0:
                    body = body + b"\x18\x05"
                    raw = b"\x0a" + encode_varint(len(body)) + body
        out += raw
    return bytes(out)


def train(name, shared, out_dir, texts):
    corpus = [t.decode("utf-8") for label, t in texts if label.startswith("data/") and t]
    prefix = os.path.join(out_dir, name)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, model_type="bpe",
        normalization_rule_name="identity", character_coverage=0.9995, num_threads=1,
        minloglevel=2, **TRAINED[name])
    path = prefix + ".model"
    if name == "trained-unk-user":
        with open(path, "rb") as f:
            model = mark_unused(f.read(), every=7)
        with open(path, "wb") as f:
            f.write(model)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, choices=sorted(SHIPPED) + sorted(TRAINED))
    args = ap.parse_args()

    texts = read_texts(args.shared)
    if args.tokenizer in SHIPPED:
        model_path = os.path.join(args.shared, SHIPPED[args.tokenizer])
        if not os.path.exists(model_path):
            fail_assets(model_path)
    else:
        model_path = train(args.tokenizer, args.shared, args.out, texts)
    sp = spm.SentencePieceProcessor(model_file=model_path)

    with open(os.path.join(args.out, "model_path"), "w", encoding="utf-8") as f:
        f.write(model_path + "\n")
    with open(os.path.join(args.out, "cases.bin"), "wb") as f:
        f.write(b"%d\n" % len(texts))
        for label, text in texts:
            ids = sp.encode(text)
            decoded = sp.decode(ids).encode("utf-8")
            f.write(label.encode("utf-8") + b"\n")
            f.write(b"%d\n%s\n" % (len(text), text))
            f.write(" ".join(map(str, ids)).encode("ascii") + b"\n")
            f.write(b"%d\n%s\n" % (len(decoded), decoded))
        sequences = random_id_sequences(sp, random.Random(20240603), 500)
        f.write(b"%d\n" % len(sequences))
        for ids in sequences:
            decoded = sp.decode(ids).encode("utf-8")
            f.write(" ".join(map(str, ids)).encode("ascii") + b"\n")
            f.write(b"%d\n%s\n" % (len(decoded), decoded))


if __name__ == "__main__":
    main()
