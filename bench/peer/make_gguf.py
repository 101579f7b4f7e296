#!/usr/bin/python3
"""Write a random-weight Q4_0 GGUF of a real Llama shape, for timing llama.cpp beside us.

Why this exists: the bar in issue #3 is "llama.cpp, Q4_0, random weights of the same shapes, 2 threads,
on this machine". Converting a real checkpoint needs numpy/torch (not installable here), and the weights'
values do not change the speed of either engine, so we write the file directly: every matrix is Q4_0
(the "pure" mix, so llama.cpp's lm_head is Q4_0 like ours; its default Q4_0 mix would make the head Q6_K,
which is larger and slower, i.e. an easier bar), norms are F32 ones.

Only the standard library plus python3-sentencepiece (for the real Llama 2 vocabulary, so llama.cpp's
tokenizer loads) are used.

    bench/peer/make_gguf.py --shape llama2-7b --tokenizer ../shared/tokenizers/llama2/tokenizer.model \
        --out /tmp/peer-7b-q4_0.gguf
"""
import argparse
import os
import struct
import sys

# Same shapes as `chatradio synth` (model/synth.cpp): hidden, intermediate, layers, heads, kv heads, ctx.
SHAPES = {
    "llama2-7b": (4096, 11008, 32, 32, 32, 4096),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 2048),
    "stories260k": (64, 172, 5, 8, 4, 512),
}

GGUF_VERSION = 3
ALIGNMENT = 32
T_F32, T_Q4_0 = 0, 2  # ggml_type
V_U32, V_I32, V_F32, V_STRING, V_ARRAY = 4, 5, 6, 8, 9  # gguf value types
Q4_0_BLOCK = 32  # weights per block
Q4_0_BYTES = 18  # f16 scale + 16 bytes of nibbles


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, value):
    out = gguf_string(key) + struct.pack("<I", vtype)
    if vtype == V_STRING:
        return out + gguf_string(value)
    if vtype == V_ARRAY:
        etype, items = value
        out += struct.pack("<IQ", etype, len(items))
        if etype == V_STRING:
            return out + b"".join(gguf_string(x) for x in items)
        fmt = {V_F32: "f", V_I32: "i", V_U32: "I"}[etype]
        return out + struct.pack("<%d%s" % (len(items), fmt), *items)
    fmt = {V_U32: "<I", V_I32: "<i", V_F32: "<f"}[vtype]
    return out + struct.pack(fmt, value)


def vocabulary(tokenizer_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # llama_token_type: 1 normal, 2 unknown, 3 control, 6 byte
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        else:
            types.append(1)
    return tokens, scores, types


def tensor_list(hidden, inter, layers, heads, kv_heads, vocab):
    kv_dim = hidden // heads * kv_heads
    # (name, ne) with ne[0] the contiguous (input) dimension, as ggml orders dims.
    out = [("token_embd.weight", (hidden, vocab))]
    for i in range(layers):
        p = "blk.%d." % i
        out += [(p + "attn_norm.weight", (hidden,)),
                (p + "attn_q.weight", (hidden, hidden)),
                (p + "attn_k.weight", (hidden, kv_dim)),
                (p + "attn_v.weight", (hidden, kv_dim)),
                (p + "attn_output.weight", (hidden, hidden)),
                (p + "ffn_norm.weight", (hidden,)),
                (p + "ffn_gate.weight", (hidden, inter)),
                (p + "ffn_up.weight", (hidden, inter)),
                (p + "ffn_down.weight", (inter, hidden))]
    out += [("output_norm.weight", (hidden,)), ("output.weight", (hidden, vocab))]
    return out


def q4_0_pool(nblocks):
    """nblocks of valid Q4_0 data: random nibbles, a small fixed positive f16 scale (random scale bytes
    could be NaN/Inf)."""
    pool = bytearray(os.urandom(nblocks * Q4_0_BYTES))
    lo, hi = struct.pack("<e", 0.004)
    pool[0::Q4_0_BYTES] = bytes([lo]) * nblocks
    pool[1::Q4_0_BYTES] = bytes([hi]) * nblocks
    return bytes(pool)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", required=True, help="Llama 2 tokenizer.model (32000 pieces)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    hidden, inter, layers, heads, kv_heads, ctx = SHAPES[a.shape]
    tokens, scores, types = vocabulary(a.tokenizer)
    vocab = len(tokens)
    meta = [
        kv("general.architecture", V_STRING, "llama"),
        kv("general.name", V_STRING, "chatradio-peer-" + a.shape),
        kv("general.file_type", V_U32, 2),  # LLAMA_FTYPE_MOSTLY_Q4_0
        kv("general.alignment", V_U32, ALIGNMENT),
        kv("llama.context_length", V_U32, ctx),
        kv("llama.embedding_length", V_U32, hidden),
        kv("llama.block_count", V_U32, layers),
        kv("llama.feed_forward_length", V_U32, inter),
        kv("llama.attention.head_count", V_U32, heads),
        kv("llama.attention.head_count_kv", V_U32, kv_heads),
        kv("llama.rope.dimension_count", V_U32, hidden // heads),
        kv("llama.rope.freq_base", V_F32, 10000.0),
        kv("llama.attention.layer_norm_rms_epsilon", V_F32, 1e-5),
        kv("llama.vocab_size", V_U32, vocab),
        kv("tokenizer.ggml.model", V_STRING, "llama"),
        kv("tokenizer.ggml.tokens", V_ARRAY, (V_STRING, tokens)),
        kv("tokenizer.ggml.scores", V_ARRAY, (V_F32, scores)),
        kv("tokenizer.ggml.token_type", V_ARRAY, (V_I32, types)),
        kv("tokenizer.ggml.bos_token_id", V_U32, 1),
        kv("tokenizer.ggml.eos_token_id", V_U32, 2),
        kv("tokenizer.ggml.unknown_token_id", V_U32, 0),
    ]

    tensors = tensor_list(hidden, inter, layers, heads, kv_heads, vocab)
    infos, offset, layout = [], 0, []
    for name, ne in tensors:
        if len(ne) == 1:
            ttype, nbytes = T_F32, 4 * ne[0]
        else:
            assert ne[0] % Q4_0_BLOCK == 0, name
            ttype, nbytes = T_Q4_0, ne[0] // Q4_0_BLOCK * Q4_0_BYTES * ne[1]
        infos.append(gguf_string(name) + struct.pack("<I", len(ne)) +
                     struct.pack("<%dQ" % len(ne), *ne) + struct.pack("<IQ", ttype, offset))
        layout.append((ttype, nbytes))
        offset += (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT

    pool = q4_0_pool(1 << 22)  # 72 MiB of blocks, written cyclically
    with open(a.out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(meta)))
        for m in meta:
            f.write(m)
        for i in infos:
            f.write(i)
        f.write(b"\0" * (-f.tell() % ALIGNMENT))
        cursor = 0
        for ttype, nbytes in layout:
            if ttype == T_F32:
                f.write(struct.pack("<%df" % (nbytes // 4), *([1.0] * (nbytes // 4))))
            else:
                left = nbytes  # a multiple of the block size, as is the pool
                while left:
                    cursor %= len(pool)
                    n = min(left, len(pool) - cursor)
                    f.write(pool[cursor:cursor + n])
                    cursor += n
                    left -= n
            f.write(b"\0" * (-f.tell() % ALIGNMENT))
    print("wrote %s: %s, %d tensors, %.2f GB" % (a.out, a.shape, len(tensors), os.path.getsize(a.out) / 1e9),
          file=sys.stderr)


if __name__ == "__main__":
    main()
