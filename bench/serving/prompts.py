"""Real report findings and the prompts our server renders from them.

The load generator sends findings to chatradio-server (which renders and
tokenizes them itself) and the same prompt, as token ids, to an
OpenAI-compatible peer, so both see identical prompts token for token. This
module mirrors server/prompt/templates.cpp (render, select) and trim_space in
server/prompt/validate.cpp exactly; the serving test checks it against the
server's prompt token count on every request.
"""
import csv
import json
import os
import random

# Display names inside templates (templates.cpp kModalityDisplay /
# kBodySystemDisplay); None = the request left it unspecified.
MODALITY_DISPLAY = {
    "zh": {"CT": "CT", "MR": "MR", "XR": "X线", "US": "超声", "PET-CT": "PET-CT", None: "未注明"},
    "en": {"CT": "CT", "MR": "MRI", "XR": "X-ray", "US": "ultrasound", "PET-CT": "PET-CT", None: "not specified"},
}
BODY_SYSTEM_DISPLAY = {
    "zh": {"chest": "胸部", "abdomen": "腹部", "musculoskeletal": "肌肉骨骼系统", "head": "头部",
           "maxillofacial_neck": "颌面颈部", None: "未注明"},
    "en": {"chest": "chest", "abdomen": "abdomen", "musculoskeletal": "musculoskeletal", "head": "head",
           "maxillofacial_neck": "maxillofacial and neck", None: "not specified"},
}

# validate.cpp is_space(): what trim_space() strips from both ends of findings.
_SPACES = set(" \t\n\r\v\f\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | {
    chr(c) for c in range(0x2000, 0x200C)}

# The datasets under ../shared/data this benchmark draws findings from, with
# the report context the server is told (language, modality, body system).
DATASETS = {
    "iu-xray": ("data/iu-xray/indiana_reports.csv", "en", "XR", "chest"),
    "cov-ctr": ("data/cov-ctr/reports_ZH_EN.csv", "zh", "CT", "chest"),
}


def trim_space(text):
    begin, end = 0, len(text)
    while begin < end and text[begin] in _SPACES:
        begin += 1
    while end > begin and text[end - 1] in _SPACES:
        end -= 1
    return text[begin:end]


def _scan(text, values):
    """templates.cpp scan_template: "{{"/"}}" are literal braces, {name} a value.

    Templates were validated by the server at start-up; one that does not
    parse here is a bug in this mirror, so it raises."""
    out, i, run = [], 0, 0
    while i < len(text):
        c = text[i]
        if c not in "{}":
            i += 1
            continue
        if i + 1 < len(text) and text[i + 1] == c:
            out.append(text[run:i + 1])
            i += 2
            run = i
            continue
        close = text.find("}", i + 1)
        if c == "}" or close < 0 or "{" in text[i + 1:close]:
            raise ValueError("malformed template text at byte %d" % i)
        out.append(text[run:i])
        out.append(values[text[i + 1:close]])
        i = close + 1
        run = i
    out.append(text[run:])
    return "".join(out)


def default_input(fmt, lang):
    if fmt == "llama2-chat":
        return "{findings}"
    return "检查所见：{findings}\n诊断意见：" if lang == "zh" else "Findings: {findings}\nImpression:"


def render(template, findings, modality=None, body_system=None):
    """The prompt text (without BOS) for findings under one template entry."""
    lang, fmt = template["language"], template.get("format", "llama2-chat")
    values = {"findings": trim_space(findings), "modality": MODALITY_DISPLAY[lang][modality],
              "body_system": BODY_SYSTEM_DISPLAY[lang][body_system]}
    system = template.get("system", "")
    instruction = template["instruction"]
    inp = template.get("input") or default_input(fmt, lang)
    if fmt == "llama2-chat":
        out = "[INST] "
        if system:
            out += "<<SYS>>\n" + _scan(system, values) + "\n<</SYS>>\n\n"
        return out + _scan(instruction, values) + "\n" + _scan(inp, values) + " [/INST]"
    out = _scan(system, values) + "\n\n" if system else ""
    return out + _scan(instruction, values) + "\n\n" + _scan(inp, values)


class Templates:
    """A templates file (deploy/templates.json format) and the server's selection rule."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        self.by_id = {t["id"]: t for t in doc["templates"]}
        self.defaults = doc["defaults"]

    def select(self, lang, body_system, template_id=None):
        """TemplateSet::select: an explicit id, else the (language, body system)
        default, else the language's default."""
        if template_id:
            return self.by_id[template_id]
        d = self.defaults[lang]
        return self.by_id[d.get("body_systems", {}).get(body_system, d["template"])]


def load_findings(shared, dataset, limit_chars):
    """Non-blank findings of a dataset, in file order, at most limit_chars long
    (0 = no limit), so a small-context model is not handed reports it cannot fit."""
    rel, lang, modality, body = DATASETS[dataset]
    path = os.path.join(shared, rel)
    with open(path, encoding="utf-8", newline="") as f:
        rows = [trim_space(r.get("findings") or "") for r in csv.DictReader(f)]
    rows = [r for r in rows if r and (limit_chars <= 0 or len(r) <= limit_chars)]
    if not rows:
        raise SystemExit("no usable findings in %s" % path)
    return rows, lang, modality, body


class PromptSource:
    """Findings drawn at random (seeded) from a dataset, each with its rendered
    prompt ids when a tokenizer is given."""

    def __init__(self, shared, dataset, templates_path, template_id, tokenizer_path, max_chars, seed):
        self.findings, self.lang, self.modality, self.body = load_findings(shared, dataset, max_chars)
        self.template = Templates(templates_path).select(self.lang, self.body, template_id)
        self.sp = None
        if tokenizer_path:
            import sentencepiece  # Debian python3-sentencepiece: the tokenizer oracle
            self.sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer_path)
        self.rng = random.Random(seed)

    def next(self):
        """(findings, prompt ids with BOS or None)."""
        findings = self.rng.choice(self.findings)
        if self.sp is None:
            return findings, None
        text = render(self.template, findings, self.modality, self.body)
        return findings, [self.sp.bos_id()] + self.sp.encode(text)
