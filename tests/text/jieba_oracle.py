#!/usr/bin/python3
"""Expected tokens and ROUGE scores from python3-jieba, for test_text.

Run with Debian's /usr/bin/python3 (python3-jieba, and python3-six for
rouge_chinese; see shared/README.md):

    jieba_oracle.py --shared ../shared --out DIR --what segment|rouge|rouge_chinese

Writes into DIR:

    dict_path     the dict.txt that jieba loads (one line); the C++ side loads it too
    segment.bin   (--what segment) a count line, then per case:
                    label line, <len>\\n<text bytes>\\n,
                    jieba.cut(text) tokens: <n>\\n then per token <len>\\n<bytes>\\n,
                    jieba.cut(text, HMM=False) tokens: the same,
                    char tokens: the same, or "-1\\n" when the text holds a
                    character that char_tokens() below does not model
    rouge.bin     (--what rouge, --what rouge_chinese) a count line, then per pair:
                    label line, segmenter name line, <len>\\n<candidate>\\n,
                    <len>\\n<reference>\\n, one line of nine floats (repr):
                    rouge1 P R F, rouge2 P R F, rougeL P R F; or the line
                    "ValueError" when rouge_chinese raised it

segment: jieba.cut with and without the HMM of every findings and impression
of both data sets (COV-CTR's Chinese and English, IU X-ray), edge cases,
seeded random mixtures of dictionary words and characters around jieba's
pattern boundaries, random runs of Han characters (the HMM's ground), and one
long text. rouge: the definitions of rouge-score (google-research),
reimplemented here in a few lines, over impression pairs of COV-CTR with the
char and jieba segmenters and over English pairs with rouge-score's own
tokenizer. rouge_chinese: the rouge_chinese 1.0.3 package itself
(../shared/oracles/rouge_chinese) on ' '.join(tokens) of every COV-CTR row
(impression vs another row's, findings vs its impression), 400 IU X-ray
pairs, COV-CTR's English and sentence-splitting edge cases.

Exit codes: 0 ok, 3 jieba or six missing, 4 test assets missing, anything else a bug.
"""

import argparse
import collections
import csv
import os
import random
import re
import sys
import unicodedata

try:
    import jieba
except ImportError:
    sys.stderr.write("python3-jieba is not installed for /usr/bin/python3 (apt-get install python3-jieba)\n")
    sys.exit(3)

COV_CTR = "data/cov-ctr/reports_ZH_EN.csv"
IU_XRAY = "data/iu-xray/indiana_reports.csv"

EDGE_CASES = [
    "", " ", "\r\n", "\r\r\n\n", "\n\r", "a\r\nb", "研究生命起源", "研究生命起源，\r\n起源 ！",
    "CT示：右肺上叶3.5cm结节（COVID-19）", "ＣＴ示双肺", "C++程序员和C#", "AT&T的PH值", "IP地址",
    "ab研究3x", "aCT片", "x.y_z%1-2+3#4&5", "___", "...", "%%", "3.5cm×2.0cm", "约1.2 cm",
    "\u4e00\u9fd5\u9fd6\u9fff\u3400", "\u3007\u3005", "\u3000肺\u3000", "肺\u00a0叶", "肺\x85叶", "\U00020000肺",
    "😀肺炎", "e\u0301", "\ufeff肺", "肺\ufffd叶", "１２３ＡＢＣ", "İstanbul", "5\u212a",
    "右肺上叶炎性病变（符合病毒性肺炎）", "两肺多发磨玻璃密度影，考虑病毒性肺炎可能。",
    # The HMM's input: single characters of the route that are no word, with
    # ASCII runs finalseg splits by [a-zA-Z0-9]+(?:\.\d+)?%?.
    "鲲鹏磬砉犇骉", "右肺见磬砉影3.5%a1.2.3b", "x1.2%磬3.b4.5.6砉", "磬%%砉#+&_-.磬", "磬a磬1磬", "磬砉。",
    "龘", "龘龘", "龘\u9fd5龘", "张三李四王五赵六", "患者韩梅梅复查",
]

# Texts whose sentences rouge_chinese's cut_sent splits in every way: its four
# rules, whitespace-only sentences (an empty word), trailing whitespace.
SENTENCE_CASES = [
    "双肺纹理清晰。右肺小结节。", "双肺纹理清晰。。右肺？！结节?", "他说：“肺炎。”然后“好转！”，复查。",
    "病灶......好转......。", "病灶……好转……”复查", "肺炎。\n\n \n结节", "肺炎。 \u3000 \n结节。\n  ",
    "肺炎’。”。’结节", "?“?”?", "。", "……", ".......", "lung clear. no effusion? yes!", "a\u00a0b\u2028c\x1cd",
]

# Characters around jieba's han pattern and the skip pattern, and others a
# report could contain.
RANDOM_SPANS = [
    (0.25, [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)]),     # ASCII letters and digits
    (0.32, [(0x2B, 0x2B), (0x23, 0x23), (0x26, 0x26), (0x2E, 0x2E), (0x5F, 0x5F), (0x25, 0x25), (0x2D, 0x2D)]),
    (0.40, [(0x20, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)]),  # ASCII punctuation
    (0.48, [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x3000, 0x3000), (0x2028, 0x2029)]),
    (0.70, [(0x4E00, 0x9FD5)]),                              # jieba's Han range
    (0.74, [(0x9FD6, 0x9FFF), (0x3400, 0x4DBF), (0x4DFF, 0x4E00), (0x9FD5, 0x9FD6)]),  # just outside / at the edges
    (0.82, [(0x3001, 0x3002), (0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0x2018, 0x201D), (0x3008, 0x3011)]),
    (0.87, [(0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0x3040, 0x30FF), (0xAC00, 0xD7A3)]),
    (0.92, [(0x00C0, 0x024F), (0x0370, 0x04FF), (0x0300, 0x036F)]),
    (1.00, [(0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0x2100, 0x2BFF)]),
]


def fail_assets(what):
    sys.stderr.write(f"test asset missing: {what} (see shared/README.md)\n")
    sys.exit(4)


def read_rows(shared, rel):
    path = os.path.join(shared, rel)
    if not os.path.exists(path):
        fail_assets(path)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def random_char(rng):
    pick = rng.random()
    for weight, spans in RANDOM_SPANS:
        if pick < weight:
            lo, hi = rng.choice(spans)
            return chr(rng.randint(lo, hi))
    return "?"


def random_texts(rng, words, count):
    """Dictionary words (including the ones with ASCII in them, like C++ and
    PH值) glued to random characters: multi-character routes, prefixes that
    stop short, ASCII runs inside Han blocks, "\\r\\n" pairs."""
    ascii_words = [w for w in words if re.search("[a-zA-Z0-9]", w)]
    out = []
    for i in range(count):
        parts = []
        for _ in range(rng.randint(0, 25)):
            pick = rng.random()
            if pick < 0.45:
                parts.append(rng.choice(words))
            elif pick < 0.55:
                parts.append(rng.choice(ascii_words))
            elif pick < 0.6:
                parts.append("\r\n")
            else:
                parts.append("".join(random_char(rng) for _ in range(rng.randint(1, 4))))
        out.append((f"random case {i}", "".join(parts)))
    return out


# ---------------------------------------------------------------- the char segmenter, for report text

def char_tokens(text):
    """docs/rouge.md's char segmenter for the characters reports contain:
    ASCII letters/digits form lowercased runs, each CJK ideograph is a token,
    punctuation/symbols/whitespace/controls (Unicode categories P*, S*, Z*, Cc)
    separate.
    None when the text holds anything else (the C++ tables decide those)."""
    out, run = [], ""
    for ch in text:
        cat = unicodedata.category(ch)
        if ch.isascii() and ch.isalnum():
            run += ch.lower()
            continue
        if run:
            out.append(run)
            run = ""
        if cat == "Lo" and 0x4E00 <= ord(ch) <= 0x9FFF:
            out.append(ch)
        elif cat[0] in "PSZ" or cat == "Cc":
            pass
        else:
            return None
    if run:
        out.append(run)
    return out


# ---------------------------------------------------------------- rouge-score's definitions

def english_tokens(text):
    """rouge_score.tokenize.tokenize(text, stemmer=None)."""
    text = re.sub(r"[^a-z0-9]+", " ", text.lower())
    return [x for x in re.split(r"\s+", text) if re.match(r"^[a-z0-9]+$", x)]


def rouge_tokens(tokens):
    """What the C++ side's normalize_tokens() does, for report text: drop
    tokens without a letter/digit/ideograph, lowercase ASCII."""
    return ["".join(c.lower() if c.isascii() else c for c in t) for t in tokens if any(c.isalnum() for c in t)]


def fmeasure(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def score_ngrams(target, prediction, n):
    t = collections.Counter(tuple(target[i:i + n]) for i in range(len(target) - n + 1))
    p = collections.Counter(tuple(prediction[i:i + n]) for i in range(len(prediction) - n + 1))
    overlap = sum(min(t[g], p[g]) for g in t)
    precision = overlap / max(sum(p.values()), 1)
    recall = overlap / max(sum(t.values()), 1)
    return precision, recall, fmeasure(precision, recall)


def score_lcs(target, prediction):
    if not target or not prediction:
        return 0.0, 0.0, 0.0
    table = [[0] * (len(prediction) + 1) for _ in range(len(target) + 1)]
    for i in range(1, len(target) + 1):
        for j in range(1, len(prediction) + 1):
            if target[i - 1] == prediction[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    lcs = table[-1][-1]
    precision = lcs / len(prediction)
    recall = lcs / len(target)
    return precision, recall, fmeasure(precision, recall)


def rouge(candidate, reference):
    return score_ngrams(reference, candidate, 1) + score_ngrams(reference, candidate, 2) + \
        score_lcs(reference, candidate)


def random_han(rng, count):
    """Runs of Han characters drawn from common and rare ones: most are no
    dictionary word together, so __cut_DAG hands them to the HMM."""
    common = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"
    rare = "".join(chr(c) for c in range(0x9F80, 0x9FD6)) + "磬砉犇骉鲲鹏龘靐齉爩"
    out = []
    for i in range(count):
        pool = common if i % 3 else rare + common[:40]
        out.append((f"random han {i}", "".join(rng.choice(pool) for _ in range(rng.randint(1, 30)))))
    return out


# ---------------------------------------------------------------- output

def blob(f, data):
    data = data.encode("utf-8")
    f.write(b"%d\n%s\n" % (len(data), data))


def write_tokens(f, tokens):
    if tokens is None:
        f.write(b"-1\n")
        return
    f.write(b"%d\n" % len(tokens))
    for t in tokens:
        blob(f, t)


def segment_cases(shared):
    cov = read_rows(shared, COV_CTR)
    iu = read_rows(shared, IU_XRAY)
    texts = []
    for i, row in enumerate(cov):
        texts.append((f"cov-ctr row {i} findings", row["findings"]))
        texts.append((f"cov-ctr row {i} impression", row["impression"]))
    texts += [(f"cov-ctr row {i} reports_En", row["reports_En"]) for i, row in enumerate(cov)]
    texts += [(f"iu-xray row {i} {col}", row[col]) for i, row in enumerate(iu) for col in ("findings", "impression")
              if row[col]]
    texts += [(f"edge case {i}", t) for i, t in enumerate(EDGE_CASES + SENTENCE_CASES)]
    words = sorted(w for w, f in jieba.dt.FREQ.items() if f)
    texts += random_texts(random.Random(20240611), words, 400)
    texts += random_han(random.Random(20261203), 600)
    # One long block of Han characters only: the route over thousands of characters.
    han = "".join(ch for _, t in texts[:1200] for ch in t if 0x4E00 <= ord(ch) <= 0x9FD5)
    texts.append(("long han block", han[:20000]))
    return texts


def rouge_pairs(shared):
    cov = read_rows(shared, COV_CTR)
    iu = read_rows(shared, IU_XRAY)
    n = len(cov)
    pairs = []
    for i in range(50):
        j = (i * 37 + 11) % n
        for seg in ("char", "jieba"):
            pairs.append((f"cov-ctr impression {i} vs {j}", seg, cov[i]["impression"], cov[j]["impression"]))
    for i in range(50, 60):  # findings are longer: more LCS work
        j = (i * 53 + 7) % n
        for seg in ("char", "jieba"):
            pairs.append((f"cov-ctr findings {i} vs {j}", seg, cov[i]["findings"], cov[j]["findings"]))
    pairs.append(("cov-ctr impression 0 vs itself", "jieba", cov[0]["impression"], cov[0]["impression"]))
    for i in range(20):
        j = (i * 41 + 5) % n
        pairs.append((f"cov-ctr reports_En {i} vs {j}", "english", cov[i]["reports_En"], cov[j]["reports_En"]))
    iu = [row["impression"] for row in iu if row["impression"]]
    for i in range(20):
        j = (i * 29 + 3) % len(iu)
        pairs.append((f"iu-xray impression {i} vs {j}", "english", iu[i], iu[j]))
    return pairs


def rouge_chinese_pairs(shared):
    """(label, segmenter, candidate, reference) for rouge_chinese."""
    cov = read_rows(shared, COV_CTR)
    iu = read_rows(shared, IU_XRAY)
    n = len(cov)
    pairs = []
    for i, row in enumerate(cov):
        j = (i * 37 + 11) % n
        pairs.append((f"cov-ctr impression {i} vs {j}", "jieba", row["impression"], cov[j]["impression"]))
        pairs.append((f"cov-ctr findings {i} vs its impression", "jieba", row["findings"], row["impression"]))
    for i in range(0, n, 6):  # the other segmenters the mode takes
        j = (i * 41 + 5) % n
        pairs.append((f"cov-ctr impression {i} vs {j}", "jieba-nohmm", cov[i]["impression"], cov[j]["impression"]))
        if char_tokens(cov[i]["findings"]) is not None and char_tokens(cov[i]["impression"]) is not None:
            pairs.append((f"cov-ctr findings {i} vs its impression", "char", cov[i]["findings"], cov[i]["impression"]))
    for i in range(100):
        j = (i * 43 + 9) % n
        pairs.append((f"cov-ctr reports_En {i} vs {j}", "jieba", cov[i]["reports_En"], cov[j]["reports_En"]))
    iu = [row for row in iu if row["findings"] and row["impression"]]
    for i in range(200):
        j = (i * 29 + 3) % len(iu)
        pairs.append((f"iu-xray impression {i} vs {j}", "jieba", iu[i]["impression"], iu[j]["impression"]))
        pairs.append((f"iu-xray findings {i} vs its impression", "jieba", iu[i]["findings"], iu[i]["impression"]))
    cases = SENTENCE_CASES + ["", " ", "\n\n", "\u3000"]
    for i, cand in enumerate(cases):
        ref = cases[(i + 1) % len(cases)]
        pairs.append((f"sentence case {i} vs {(i + 1) % len(cases)}", "jieba", cand, ref))
        pairs.append((f"sentence case {i} vs itself", "jieba", cand, cand))
    return pairs


def tokens_for(seg, text):
    if seg == "jieba":
        return rouge_tokens(list(jieba.cut(text)))
    if seg == "jieba-nohmm":
        return rouge_tokens(list(jieba.cut(text, HMM=False)))
    if seg == "char":
        tokens = char_tokens(text)
        if tokens is None:
            raise ValueError("char_tokens() does not model this text")
        return tokens
    return english_tokens(text)


def raw_tokens(seg, text):
    """Tokens as the segmenter yields them, for rouge_chinese's ' '.join()."""
    if seg == "jieba":
        return list(jieba.cut(text))
    if seg == "jieba-nohmm":
        return list(jieba.cut(text, HMM=False))
    return char_tokens(text)


def import_rouge_chinese(shared):
    """Rouge().get_scores(hyp, ref)[0] as nine floats, from the package source in shared/oracles."""
    path = os.path.join(shared, "oracles", "rouge_chinese")
    if not os.path.isdir(path):
        fail_assets(path)
    try:
        import six  # noqa: F401  (rouge_chinese imports it)
    except ImportError:
        sys.stderr.write("python3-six is not installed for /usr/bin/python3 (apt-get install python3-six)\n")
        sys.exit(3)
    sys.path.insert(0, path)
    from rouge_chinese import Rouge
    r = Rouge()

    def score(hyp, ref):
        s = r.get_scores(hyp, ref)[0]
        return [s[m][k] for m in ("rouge-1", "rouge-2", "rouge-l") for k in ("p", "r", "f")]
    return score


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--what", required=True, choices=["segment", "rouge", "rouge_chinese"])
    args = ap.parse_args()

    jieba.setLogLevel(60)  # no "Building prefix dict" chatter on stderr
    jieba.initialize()
    dict_path = os.path.join(os.path.dirname(jieba.__file__), jieba.DEFAULT_DICT_NAME)
    with open(os.path.join(args.out, "dict_path"), "w", encoding="utf-8") as f:
        f.write(dict_path + "\n")

    if args.what == "segment":
        cases = segment_cases(args.shared)
        with open(os.path.join(args.out, "segment.bin"), "wb") as f:
            f.write(b"%d\n" % len(cases))
            for label, text in cases:
                f.write(label.encode("utf-8") + b"\n")
                blob(f, text)
                write_tokens(f, list(jieba.cut(text)))
                write_tokens(f, list(jieba.cut(text, HMM=False)))
                write_tokens(f, char_tokens(text))
        return
    if args.what == "rouge":
        pairs = rouge_pairs(args.shared)
        score = lambda seg, cand, ref: rouge(tokens_for(seg, cand), tokens_for(seg, ref))
    else:
        rouge_chinese = import_rouge_chinese(args.shared)
        pairs = rouge_chinese_pairs(args.shared)
        score = lambda seg, cand, ref: rouge_chinese(" ".join(raw_tokens(seg, cand)), " ".join(raw_tokens(seg, ref)))
    with open(os.path.join(args.out, "rouge.bin"), "wb") as f:
        f.write(b"%d\n" % len(pairs))
        for label, seg, cand, ref in pairs:
            f.write(label.encode("utf-8") + b"\n" + seg.encode("ascii") + b"\n")
            blob(f, cand)
            blob(f, ref)
            try:
                scores = score(seg, cand, ref)
            except ValueError:  # rouge_chinese on an empty side
                f.write(b"ValueError\n")
                continue
            f.write(" ".join(repr(float(s)) for s in scores).encode("ascii") + b"\n")


if __name__ == "__main__":
    main()
