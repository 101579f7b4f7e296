// Parsing Hugging Face config.json into LlamaConfig.
//
// The forward pass implements exactly one architecture: HF LlamaForCausalLM
// with rotate_half RoPE (no scaling), SwiGLU (silu), RMSNorm, optional GQA and
// no biases. A config asking for anything else must fail loudly here: running
// such a model with our math would produce plausible-looking garbage. Fields
// that do not change inference (dtype, dropout, init, pad id, ...) are ignored,
// as are keys we do not know, so configs written by newer transformers still
// load.
#include "model/config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "model/errors.h"
#include "model/file_util.h"
#include "model/json_util.h"

namespace chatradio::model {
namespace {

using nlohmann::json;

class ConfigReader {
 public:
  ConfigReader(const json& root, const std::string& source) : root_(root), source_(source) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw ModelError(source_ + ": field '" + field + "': " + what);
  }

  // Absent and null both mean "not given": some exporters write null for
  // unset optional fields.
  const json* find(const std::string& field) const {
    auto it = root_.find(field);
    if (it == root_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  int64_t integer(const std::string& field, const json& v) const {
    // Reject 64.0 as well as "64": HF always writes integers, and a float here
    // means the file was produced by something we do not understand.
    if (!v.is_number_integer()) fail(field, "expected an integer, got " + describe(v));
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail(field, "integer out of range");
      return static_cast<int64_t>(u);
    }
    return v.get<int64_t>();
  }

  // A strictly positive size that must fit an int (tensor dimensions).
  int positive_int(const std::string& field, const json& v) const {
    int64_t x = integer(field, v);
    if (x <= 0) fail(field, "must be positive, got " + std::to_string(x));
    if (x > std::numeric_limits<int>::max()) fail(field, "too large: " + std::to_string(x));
    return static_cast<int>(x);
  }

  int required_size(const std::string& field) const {
    const json* v = find(field);
    if (!v) fail(field, "required field is missing");
    return positive_int(field, *v);
  }

  int optional_size(const std::string& field, int fallback) const {
    const json* v = find(field);
    return v ? positive_int(field, *v) : fallback;
  }

  float positive_float(const std::string& field, float fallback) const {
    const json* v = find(field);
    if (!v) return fallback;
    if (!v->is_number()) fail(field, "expected a number, got " + describe(*v));
    double d = v->get<double>();
    if (!std::isfinite(d) || d <= 0.0) fail(field, "must be a positive finite number");
    float f = static_cast<float>(d);
    if (!std::isfinite(f) || f <= 0.0f) fail(field, "out of float range");
    return f;
  }

  bool boolean(const std::string& field, bool fallback) const {
    const json* v = find(field);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(field, "expected true or false, got " + describe(*v));
    return v->get<bool>();
  }

  std::string string(const std::string& field) const {
    const json* v = find(field);
    if (!v) return {};
    if (!v->is_string()) fail(field, "expected a string, got " + describe(*v));
    return v->get<std::string>();
  }

  static std::string describe(const json& v) {
    std::string s = v.dump();
    if (s.size() > 40) s = s.substr(0, 37) + "...";
    return std::string(v.type_name()) + " " + s;
  }

 private:
  const json& root_;
  const std::string& source_;
};

// nlohmann keeps the last of duplicated keys silently; a config that says
// "hidden_size" twice is ambiguous, so we find duplicates while parsing.
json parse_rejecting_duplicates(const std::string& text, const std::string& source) {
  std::string duplicate;
  json root = parse_json_strict(text.data(), text.data() + text.size(), source, &duplicate);
  if (!duplicate.empty()) throw ModelError(source + ": field '" + duplicate + "': appears twice");
  return root;
}

int32_t token_id(const ConfigReader& r, const std::string& field, const json& v, int vocab) {
  int64_t id = r.integer(field, v);
  if (id < 0 || id >= vocab)
    r.fail(field, "token id " + std::to_string(id) + " outside vocabulary [0, " + std::to_string(vocab) + ")");
  return static_cast<int32_t>(id);
}

}  // namespace

LlamaConfig parse_llama_config(const std::string& json_text, const std::string& source) {
  json root = parse_rejecting_duplicates(json_text, source);
  if (!root.is_object())
    throw ModelError(source + ": expected a JSON object at top level, got " + std::string(root.type_name()));
  ConfigReader r(root, source);

  // --- What the model is. Both are optional (older exporters omit them), but
  // when present they must say Llama.
  if (const json* a = r.find("architectures")) {
    if (!a->is_array() || a->empty()) r.fail("architectures", "expected a non-empty array of strings");
    for (const json& e : *a) {
      if (!e.is_string()) r.fail("architectures", "expected strings, got " + ConfigReader::describe(e));
      if (e.get<std::string>() != "LlamaForCausalLM")
        r.fail("architectures", "unsupported architecture '" + e.get<std::string>() +
                                    "' (only LlamaForCausalLM is implemented)");
    }
  }
  if (r.find("model_type")) {
    std::string mt = r.string("model_type");
    if (mt != "llama") r.fail("model_type", "unsupported model type '" + mt + "' (only 'llama')");
  }

  // --- Sizes.
  LlamaConfig c;
  c.hidden_size = r.required_size("hidden_size");
  c.intermediate_size = r.required_size("intermediate_size");
  c.num_hidden_layers = r.required_size("num_hidden_layers");
  c.num_attention_heads = r.required_size("num_attention_heads");
  c.vocab_size = r.required_size("vocab_size");
  c.num_key_value_heads = r.optional_size("num_key_value_heads", c.num_attention_heads);
  c.max_position_embeddings = r.optional_size("max_position_embeddings", 2048);
  c.rms_norm_eps = r.positive_float("rms_norm_eps", 1e-6f);
  c.rope_theta = r.positive_float("rope_theta", 10000.0f);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);

  if (c.hidden_size % c.num_attention_heads != 0)
    r.fail("num_attention_heads", "hidden_size " + std::to_string(c.hidden_size) + " is not divisible by " +
                                      std::to_string(c.num_attention_heads) + " heads");
  if (c.head_dim() % 2 != 0)  // rotate_half pairs dimension i with i + head_dim/2
    r.fail("num_attention_heads", "head dimension " + std::to_string(c.head_dim()) + " must be even for RoPE");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_key_value_heads", std::to_string(c.num_attention_heads) + " attention heads are not divisible by " +
                                      std::to_string(c.num_key_value_heads) + " key/value heads");
  if (const json* hd = r.find("head_dim")) {
    // Newer transformers write head_dim explicitly and allow it to differ from
    // hidden/heads (then q_proj is not square); our kernels assume equality.
    int64_t v = r.integer("head_dim", *hd);
    if (v != c.head_dim())
      r.fail("head_dim", std::to_string(v) + " differs from hidden_size / num_attention_heads = " +
                             std::to_string(c.head_dim()));
  }

  // --- Token ids. eos may be a list (Llama 3 style configs); generation stops
  // on our single eos, so the first entry is the canonical one.
  if (const json* b = r.find("bos_token_id")) c.bos_token_id = token_id(r, "bos_token_id", *b, c.vocab_size);
  if (const json* e = r.find("eos_token_id")) {
    if (e->is_array()) {
      if (e->empty()) r.fail("eos_token_id", "empty list");
      c.eos_token_id = token_id(r, "eos_token_id", e->front(), c.vocab_size);
      for (const json& x : *e) token_id(r, "eos_token_id", x, c.vocab_size);  // type-check the rest
    } else {
      c.eos_token_id = token_id(r, "eos_token_id", *e, c.vocab_size);
    }
  }
  // The defaults (BOS 1, EOS 2) must fit the vocabulary too: a config without
  // the ids and with a tiny vocabulary would otherwise load and then fail to
  // round-trip (fuzz_llama_config).
  if (c.bos_token_id >= c.vocab_size && !r.find("bos_token_id")) {
    r.fail("bos_token_id", "absent, and the default 1 is outside vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  }
  if (c.eos_token_id >= c.vocab_size && !r.find("eos_token_id")) {
    r.fail("eos_token_id", "absent, and the default 2 is outside vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  }

  // --- Features our forward pass does not implement.
  if (const json* rs = r.find("rope_scaling"))
    r.fail("rope_scaling", "RoPE scaling is not supported (got " + ConfigReader::describe(*rs) + ")");
  if (r.boolean("attention_bias", false)) r.fail("attention_bias", "attention projections with bias are not supported");
  if (r.boolean("mlp_bias", false)) r.fail("mlp_bias", "MLP projections with bias are not supported");
  if (r.find("hidden_act")) {
    std::string act = r.string("hidden_act");
    if (act != "silu") r.fail("hidden_act", "unsupported activation '" + act + "' (only 'silu')");
  }
  if (const json* tp = r.find("pretraining_tp")) {
    // pretraining_tp > 1 makes transformers split the matmuls into slices,
    // which changes float rounding; the weights assume tp == 1 semantics.
    int64_t v = r.integer("pretraining_tp", *tp);
    if (v != 1) r.fail("pretraining_tp", "only 1 is supported, got " + std::to_string(v));
  }
  return c;
}

LlamaConfig load_llama_config(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  return parse_llama_config(read_text_file(path, "cannot open config file"), path);
}

}  // namespace chatradio::model
