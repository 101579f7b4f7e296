#include "model/lora.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <string_view>

#include "model/errors.h"
#include "model/file_util.h"
#include "model/json_util.h"
#include "model/quantizer.h"

namespace chatradio::model {

struct LoraAdapter::Edit {
  LlamaTensor weight;                       // the weight edited, with the model's shape
  const TensorView* replacement = nullptr;  // the weight's shape; applied before the delta
  const TensorView* a = nullptr;            // linear: lora_A [r, cols]; embedding: lora_embedding_A [r, rows]
  const TensorView* b = nullptr;            // linear: lora_B [rows, r]; embedding: lora_embedding_B [cols, r]
  bool base_layer = false;                  // the replacement is M.base_layer.weight (of M's LoRA)
  bool embedding = false;                   // a/b are lora_embedding_A/B
  bool nonzero_delta = false;               // neither A nor B is all zeros
};

namespace {

// Elements converted at a time when scanning or copying a saved tensor, so a
// replaced 7B embedding is never held twice in float32.
constexpr int64_t kSliceElems = int64_t{1} << 20;

// What a tensor of adapter_model.safetensors is, from its name.
enum class Part { kLoraA, kLoraB, kEmbeddingA, kEmbeddingB, kSaved, kBaseLayer };

struct Role {
  std::string module;  // "model.layers.0.self_attn.q_proj"
  Part part;
};

const char* part_name(Part p) {
  switch (p) {
    case Part::kLoraA:
      return "lora_A";
    case Part::kLoraB:
      return "lora_B";
    case Part::kEmbeddingA:
      return "lora_embedding_A";
    case Part::kEmbeddingB:
      return "lora_embedding_B";
    case Part::kSaved:
      return "saved module weight";
    case Part::kBaseLayer:
      return "base_layer weight";
  }
  return "?";
}

// The names PEFT gives adapter tensors (get_peft_model_state_dict), after an
// optional "base_model.model." prefix, for a module M:
//   M.lora_A.weight, M.lora_B.weight          M.lora_A.<adapter>.weight unsaved
//   M.lora_embedding_A, M.lora_embedding_B    M.lora_embedding_A.<adapter> unsaved
//   M.weight                                  modules_to_save, or an embedding / lm_head
//                                             saved because the vocabulary was resized
//   M.modules_to_save.<adapter>.weight        modules_to_save, unsaved
//   M.base_layer.weight                       base weight of a LoRA layer (saved for
//                                             embeddings that have a LoRA)
// Anything else is not understood.
std::optional<Role> classify(std::string_view name) {
  static constexpr std::string_view kPrefix = "base_model.model.";
  if (name.starts_with(kPrefix)) name.remove_prefix(kPrefix.size());
  std::vector<std::string_view> c;
  for (size_t at = 0;;) {
    const size_t dot = name.find('.', at);
    c.push_back(name.substr(at, dot == std::string_view::npos ? std::string_view::npos : dot - at));
    if (dot == std::string_view::npos) break;
    at = dot + 1;
  }
  const size_t n = c.size();
  // c[n - 1 - k] == s, with at least one component left for the module.
  auto is = [&](size_t k, std::string_view s) { return n >= k + 2 && c[n - 1 - k] == s; };
  auto module = [&](size_t drop) {  // the first n - drop components, joined
    std::string m(c[0]);
    for (size_t i = 1; i + drop < n; ++i) {
      m += '.';
      m += c[i];
    }
    return m;
  };
  if (c.back() == "weight") {
    for (const auto& [half, part] : {std::pair{"lora_A", Part::kLoraA}, std::pair{"lora_B", Part::kLoraB}}) {
      if (is(1, half)) return Role{module(2), part};
      if (is(2, half)) return Role{module(3), part};
    }
    if (is(2, "modules_to_save")) return Role{module(3), Part::kSaved};
    if (is(1, "base_layer")) return Role{module(2), Part::kBaseLayer};
    if (n >= 2) return Role{module(1), Part::kSaved};
    return std::nullopt;
  }
  for (const auto& [half, part] :
       {std::pair{"lora_embedding_A", Part::kEmbeddingA}, std::pair{"lora_embedding_B", Part::kEmbeddingB}}) {
    if (n >= 2 && c.back() == half) return Role{module(1), part};
    if (is(1, half)) return Role{module(2), part};
  }
  return std::nullopt;
}

bool lora_able(const LlamaTensor& t) { return t.kind != LlamaTensor::Kind::kNorm; }

// "model.layers.12.mlp.up_proj" -> 12; -1 outside the decoder layers.
int layer_of(const std::string& module) {
  static constexpr std::string_view kLayers = "model.layers.";
  if (!module.starts_with(kLayers)) return -1;
  return std::atoi(module.c_str() + kLayers.size());
}

std::string quoted_list(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "'" : ", '") + x + "'";
  return s;
}

// Converts the tensor slice by slice (to_f32 rejects other dtypes and
// non-finite values, naming the tensor) and says whether any element is non-zero.
bool any_nonzero(const TensorView& t) {
  const int64_t n = t.numel();
  std::vector<float> buf(static_cast<size_t>(std::min(kSliceElems, n)));  // [slice]
  bool nonzero = false;
  for (int64_t i = 0; i < n; i += kSliceElems) {
    const std::span<float> s(buf.data(), static_cast<size_t>(std::min(kSliceElems, n - i)));
    to_f32(s, t, i);
    nonzero = nonzero || std::any_of(s.begin(), s.end(), [](float x) { return x != 0.0f; });
  }
  return nonzero;
}

// w[n] = the tensor's values; returns whether any bit changed.
bool replace(std::span<float> w, const TensorView& t) {
  std::vector<float> buf(std::min(static_cast<size_t>(kSliceElems), w.size()));  // [slice]
  bool changed = false;
  for (size_t i = 0; i < w.size(); i += buf.size()) {
    const size_t n = std::min(buf.size(), w.size() - i);
    to_f32(std::span<float>(buf.data(), n), t, static_cast<int64_t>(i));
    changed = changed || std::memcmp(w.data() + i, buf.data(), n * sizeof(float)) != 0;
    std::memcpy(w.data() + i, buf.data(), n * sizeof(float));
  }
  return changed;
}

std::vector<float> read_all(const TensorView& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  to_f32(v, t);
  return v;
}

// w[rows, cols] += scale · L · R with L[rows, rank], R[rank, cols]. Row i
// gains Σ_k (scale · L[i,k]) · R[k,:]: scaling L's entry first keeps the
// inner loop a plain axpy over R's contiguous rows, and fixes the order of
// the roundings (k ascending) that the tests reproduce bit for bit.
void add_low_rank(std::span<float> w, const std::vector<float>& l, const std::vector<float>& r, int rows, int rank,
                  int cols, float scale) {
  for (int i = 0; i < rows; ++i) {
    float* wi = w.data() + static_cast<size_t>(i) * cols;
    for (int k = 0; k < rank; ++k) {
      const float c = scale * l[static_cast<size_t>(i) * rank + k];
      const float* rk = r.data() + static_cast<size_t>(k) * cols;
      for (int j = 0; j < cols; ++j) wi[j] += c * rk[j];
    }
  }
}

// m[rows, cols] -> [cols, rows].
std::vector<float> transposed(const std::vector<float>& m, int rows, int cols) {
  std::vector<float> t(m.size());
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) t[static_cast<size_t>(j) * rows + i] = m[static_cast<size_t>(i) * cols + j];
  return t;
}

ModuleSelector parse_selector(const nlohmann::json& j, const char* key, const std::string& source) {
  ModuleSelector s;
  if (!j.contains(key) || j[key].is_null()) return s;
  const nlohmann::json& v = j[key];
  if (v.is_string()) {
    s.regex = v.get<std::string>();
    if (s.regex == "all-linear") return s;
    try {
      std::regex check(s.regex);
    } catch (const std::regex_error& e) {
      throw ModelError(source + ": field '" + key + "' = " + v.dump() +
                       " is not a regular expression chatradio can read (ECMAScript syntax): " + e.what());
    }
    return s;
  }
  if (v.is_array() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& x) { return x.is_string(); })) {
    s.names = v.get<std::vector<std::string>>();
    return s;
  }
  throw ModelError(source + ": field '" + key + "' must be a list of module names or one regular expression, got " +
                   v.dump());
}

}  // namespace

bool ModuleSelector::matches(const std::string& path, bool decoder_linear) const {
  if (regex == "all-linear") return decoder_linear;  // PEFT: every linear but the output layer
  if (!regex.empty()) return std::regex_match(path, std::regex(regex));
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) {
    return path == n || (path.size() > n.size() && path.ends_with(n) && path[path.size() - n.size() - 1] == '.');
  });
}

LoraConfig parse_lora_config(const std::string& json_text, const std::string& source) {
  nlohmann::json j = parse_json_object(json_text, source);
  auto reject_if = [&](const char* key, auto bad, const char* why) {
    if (j.contains(key) && !j[key].is_null() && bad(j[key])) {
      throw ModelError(source + ": field '" + key + "' = " + j[key].dump() + " is not supported" + why);
    }
  };
  auto is_true = [](const nlohmann::json& v) { return v == true; };
  auto non_empty = [](const nlohmann::json& v) { return !v.empty(); };
  reject_if(
      "peft_type", [](const nlohmann::json& v) { return v != "LORA"; }, " (only LoRA adapters can be merged)");
  reject_if("fan_in_fan_out", is_true, "");
  reject_if("use_rslora", is_true, "");
  reject_if("use_dora", is_true, "");
  reject_if(
      "bias", [](const nlohmann::json& v) { return v != "none"; }, "");
  reject_if("lora_bias", is_true, "");
  reject_if("rank_pattern", non_empty, "");
  reject_if("alpha_pattern", non_empty, "");
  reject_if("use_qalora", is_true, "");
  reject_if("trainable_token_indices", non_empty, "");
  reject_if("layer_replication", non_empty, " (it changes the number of layers)");
  reject_if("target_parameters", non_empty, "");
  reject_if("alora_invocation_tokens", non_empty,
            " (an aLoRA acts only after its invocation tokens; merged it "
            "would act everywhere)");
  reject_if("arrow_config", non_empty, "");
  reject_if(
      "init_lora_weights",
      [](const nlohmann::json& v) {
        if (!v.is_string()) return false;
        const std::string s = v.get<std::string>();
        return s.starts_with("pissa") || s == "olora" || s == "corda" || s == "loftq";
      },
      " (the adapter is relative to a base model this initialisation changed; convert it to a plain LoRA "
      "with PEFT's path_initial_model_for_weight_conversion first)");
  LoraConfig c;
  try {
    c.r = j.at("r").get<int>();
    c.alpha = j.at("lora_alpha").get<float>();
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(source + ": fields 'r' and 'lora_alpha' must be numbers: " + e.what());
  }
  if (c.r <= 0) throw ModelError(source + ": field 'r' must be > 0");
  c.target_modules = parse_selector(j, "target_modules", source);
  c.exclude_modules = parse_selector(j, "exclude_modules", source);
  const ModuleSelector to_save = parse_selector(j, "modules_to_save", source);
  if (!to_save.regex.empty()) throw ModelError(source + ": field 'modules_to_save' must be a list of module names");
  c.modules_to_save = to_save.names;
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const nlohmann::json& v = j["layers_to_transform"];
    if (v.is_number_integer()) {
      c.layers_to_transform = {v.get<int>()};
    } else if (v.is_array() && std::all_of(v.begin(), v.end(), [](const auto& x) { return x.is_number_integer(); })) {
      c.layers_to_transform = v.get<std::vector<int>>();
    } else {
      throw ModelError(source + ": field 'layers_to_transform' must be a layer index or a list of them, got " +
                       v.dump());
    }
  }
  return c;
}

namespace {

using Edit = LoraAdapter::Edit;
using Modules = std::map<std::string, LlamaTensor>;  // module path -> its weight

// The model's modules by path. A tied model has an lm_head module whose
// weight is the embedding's (not in llama_tensors, which lists what is stored).
Modules model_modules(const LlamaConfig& model) {
  Modules modules;
  for (const LlamaTensor& t : llama_tensors(model)) modules.emplace(t.prefix(), t);
  if (model.tie_word_embeddings)
    modules.emplace("lm_head",
                    LlamaTensor{LlamaTensor::Kind::kLmHead, "lm_head.weight", model.vocab_size, model.hidden_size});
  return modules;
}

// target_modules / modules_to_save naming modules the model lacks: the
// adapter was trained on another architecture (or the names are typos).
void check_module_names(const LoraConfig& cfg, const Modules& modules, const std::string& cfg_path) {
  auto any_module = [&](const ModuleSelector& sel, bool lora_only) {
    return std::any_of(modules.begin(), modules.end(), [&](const auto& m) {
      return (!lora_only || lora_able(m.second)) && sel.matches(m.first, m.second.kind == LlamaTensor::Kind::kLinear);
    });
  };
  std::vector<std::string> missing;
  for (const std::string& name : cfg.target_modules.names)
    if (!any_module(ModuleSelector{{name}, {}}, true)) missing.push_back(name);
  if (!missing.empty())
    throw ModelError(cfg_path + ": target_modules names modules this model does not have: " + quoted_list(missing) +
                     " (a Llama has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, embed_tokens, "
                     "lm_head)");
  if (!cfg.target_modules.regex.empty() && !any_module(cfg.target_modules, true))
    throw ModelError(cfg_path + ": target_modules '" + cfg.target_modules.regex + "' matches no module of this model");
  for (const std::string& name : cfg.modules_to_save)
    if (!any_module(ModuleSelector{{name}, {}}, false)) missing.push_back(name);
  if (!missing.empty())
    throw ModelError(cfg_path + ": modules_to_save names modules this model does not have: " + quoted_list(missing));
}

// Sorts every tensor of the file into the edit of the weight it belongs to,
// or refuses the adapter naming the tensor.
std::map<std::string, Edit> collect_edits(const SafetensorsFile& f, const Modules& modules) {
  const std::string& file = f.path();
  std::map<std::string, Edit> edits;                         // weight name -> edit
  std::map<std::pair<std::string, Part>, std::string> seen;  // (module, part) -> tensor name
  for (const auto& [name, view] : f.tensors()) {
    const std::optional<Role> role = classify(name);
    auto it = role ? modules.find(role->module) : modules.end();
    if (it == modules.end()) {
      if (role && role->part != Part::kSaved)
        throw ModelError(file + ": the adapter has weights for '" + role->module +
                         ".weight', which this model lacks (tensor '" + name + "')");
      throw ModelError(file + ": tensor '" + name +
                       "' is not understood: it is neither a LoRA weight (lora_A/lora_B, " +
                       "lora_embedding_A/lora_embedding_B) nor the saved weight of a module this model has; " +
                       "refusing the adapter rather than ignoring part of it");
    }
    const LlamaTensor& w = it->second;
    const auto [prev, fresh] = seen.emplace(std::pair{role->module, role->part}, name);
    if (!fresh)
      throw ModelError(file + ": tensors '" + prev->second + "' and '" + name + "' are both the " +
                       part_name(role->part) + " of '" + role->module + "' (two adapters in one file?)");
    const bool linear_like = w.kind == LlamaTensor::Kind::kLinear || w.kind == LlamaTensor::Kind::kLmHead;
    if ((role->part == Part::kLoraA || role->part == Part::kLoraB) && !linear_like)
      throw ModelError(file + ": tensor '" + name + "': '" + role->module + "' is " +
                       (w.kind == LlamaTensor::Kind::kEmbed
                            ? "an embedding; PEFT stores an embedding's LoRA as lora_embedding_A/lora_embedding_B"
                            : "a norm, which has no LoRA"));
    if ((role->part == Part::kEmbeddingA || role->part == Part::kEmbeddingB) && w.kind != LlamaTensor::Kind::kEmbed)
      throw ModelError(file + ": tensor '" + name + "': '" + role->module +
                       "' is not an embedding, so it cannot have a lora_embedding_A/B");
    Edit& e = edits[w.name];
    e.weight = w;
    switch (role->part) {
      case Part::kLoraA:
      case Part::kEmbeddingA:
        e.a = &view;
        break;
      case Part::kLoraB:
      case Part::kEmbeddingB:
        e.b = &view;
        break;
      case Part::kSaved:
      case Part::kBaseLayer:
        if (e.replacement)
          throw ModelError(file + ": tensors '" + e.replacement->name + "' and '" + name + "' both replace '" + w.name +
                           "'");
        e.replacement = &view;
        e.base_layer = role->part == Part::kBaseLayer;
        break;
    }
    e.embedding = e.embedding || role->part == Part::kEmbeddingA || role->part == Part::kEmbeddingB;
  }
  return edits;
}

// Checks one edit against its weight and the config, then scans its values
// (dtype, finiteness: to_f32) so nothing fails after the first write.
void check_edit(Edit& e, const LoraConfig& cfg, const std::string& file) {
  const LlamaTensor& w = e.weight;
  const std::string module = w.prefix();
  if (!e.a != !e.b)
    throw ModelError(file + ": adapter for '" + w.name + "' has only one of " +
                     (e.embedding ? "lora_embedding_A/lora_embedding_B" : "lora_A/lora_B") + " (tensor '" +
                     (e.a ? e.a : e.b)->name + "')");
  const bool lora = e.a != nullptr;
  if (e.replacement && e.base_layer && !lora)
    throw ModelError(file + ": tensor '" + e.replacement->name +
                     "' is the base layer of a LoRA, but the adapter has no LoRA for '" + module + "'");
  if (e.replacement && !e.base_layer && lora)
    throw ModelError(file + ": '" + module + "' has both a saved module weight ('" + e.replacement->name +
                     "') and a LoRA; PEFT saves a LoRA layer's own weight as " + module + ".base_layer.weight");
  if (e.replacement && e.replacement->shape != w.shape()) {
    std::string hint;
    if (w.kind == LlamaTensor::Kind::kEmbed || w.kind == LlamaTensor::Kind::kLmHead)
      hint = " (was the vocabulary resized for the adapter? the base model must have the adapter's vocabulary)";
    throw ModelError(file + ": tensor '" + e.replacement->name + "' replaces '" + w.name + "' but has shape " +
                     shape_str(e.replacement->shape) + " where the model has " + shape_str(w.shape()) + hint);
  }
  if (e.replacement) any_nonzero(*e.replacement);
  if (!lora) return;
  // PEFT: linear A [r, in], B [out, r]; embedding A [r, vocab], B [dim, r].
  const int r = cfg.r;
  const std::vector<int64_t> a_shape = e.embedding ? std::vector<int64_t>{r, w.rows} : std::vector<int64_t>{r, w.cols};
  const std::vector<int64_t> b_shape = e.embedding ? std::vector<int64_t>{w.cols, r} : std::vector<int64_t>{w.rows, r};
  for (const auto& [t, want] : {std::pair{e.a, a_shape}, std::pair{e.b, b_shape}})
    if (t->shape != want)
      throw ModelError(file + ": tensor '" + t->name + "' has shape " + shape_str(t->shape) + "; for '" + w.name +
                       "' " + shape_str(w.shape()) + " with r=" + std::to_string(r) + " it must be " + shape_str(want));
  const bool linear = w.kind == LlamaTensor::Kind::kLinear;
  if (!cfg.target_modules.empty() && !cfg.target_modules.matches(module, linear))
    throw ModelError(file + ": tensor '" + e.a->name + "' is a LoRA of '" + module +
                     "', which target_modules does not select; PEFT would not load it");
  if (cfg.exclude_modules.matches(module, linear))
    throw ModelError(file + ": tensor '" + e.a->name + "' is a LoRA of '" + module +
                     "', which exclude_modules excludes; PEFT would not load it");
  const int layer = layer_of(module);
  const std::vector<int>& layers = cfg.layers_to_transform;
  if (layer >= 0 && !layers.empty() && std::find(layers.begin(), layers.end(), layer) == layers.end())
    throw ModelError(file + ": tensor '" + e.a->name + "' is a LoRA of layer " + std::to_string(layer) +
                     ", which layers_to_transform excludes; PEFT would not load it");
  const bool a_nonzero = any_nonzero(*e.a);  // both halves are scanned even when the first is zero
  e.nonzero_delta = any_nonzero(*e.b) && a_nonzero;
}

// Tied embeddings: the embedding is also the output layer, so whatever
// changes embed_tokens changes lm_head (PEFT's merge writes into the one
// shared tensor; ensure_weight_tying keeps saved copies tied). An edit of
// lm_head alone cannot be stored in a tied checkpoint: refused, unless it is
// the same tensor saved twice (PEFT saves both ends of a resized vocabulary),
// which is then dropped: the embedding's replacement stands for both.
void fold_tied_head(std::map<std::string, Edit>& edits, const std::string& file) {
  auto head = edits.find("lm_head.weight");
  if (head == edits.end()) return;
  const Edit& h = head->second;
  if (h.a)
    throw ModelError(file + ": tensor '" + h.a->name + "' is a LoRA of lm_head, but lm_head is tied to " +
                     "embed_tokens in this model (tie_word_embeddings): merging it would change the input " +
                     "embedding too. Refused; train the LoRA on embed_tokens, or on an untied model");
  auto emb = edits.find("model.embed_tokens.weight");
  const TensorView* er = emb == edits.end() ? nullptr : emb->second.replacement;
  const TensorView* hr = h.replacement;
  if (!er || er->dtype != hr->dtype || er->shape != hr->shape || er->nbytes != hr->nbytes ||
      std::memcmp(er->data, hr->data, hr->nbytes) != 0)
    throw ModelError(file + ": tensor '" + hr->name + "' replaces lm_head, but lm_head is tied to embed_tokens " +
                     "in this model (tie_word_embeddings) and the adapter does not replace embed_tokens with " +
                     "the same tensor; a tied checkpoint cannot hold two different ones");
  edits.erase(head);
}

}  // namespace

LoraAdapter::LoraAdapter(const std::string& dir, const LlamaConfig& model) : dir_(dir) {
  const std::string cfg_path = dir + "/adapter_config.json";
  cfg_ = parse_lora_config(read_text_file(cfg_path), cfg_path);
  const std::string st = dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(st) && std::filesystem::exists(dir + "/adapter_model.bin"))
    throw ModelError(dir + ": adapter_model.bin (a PyTorch pickle) is not read, only adapter_model.safetensors; " +
                     "convert it (safetensors.torch.save_file) or save the adapter with safe_serialization=True");
  file_ = std::make_unique<SafetensorsFile>(st);
  const std::string& file = file_->path();
  const Modules modules = model_modules(model);
  check_module_names(cfg_, modules, cfg_path);
  std::map<std::string, Edit> edits = collect_edits(*file_, modules);
  for (auto& [weight, e] : edits) check_edit(e, cfg_, file);
  if (model.tie_word_embeddings) fold_tied_head(edits, file);

  if (edits.empty())
    throw ModelError(file + ": the adapter holds no LoRA weights (lora_A/lora_B, lora_embedding_A/lora_embedding_B) " +
                     "and no saved modules: applying it would change nothing");
  if (std::none_of(edits.begin(), edits.end(),
                   [](const auto& e) { return e.second.replacement || e.second.nonzero_delta; }))
    throw ModelError(file + ": every LoRA pair has lora_B or lora_A all zeros, so the adapter would change " +
                     "nothing (PEFT initialises lora_B to zeros: was it saved before training?)");
  for (auto& [weight, e] : edits) edits_.push_back(std::move(e));  // map order: sorted by weight
}

LoraAdapter::~LoraAdapter() = default;
LoraAdapter::LoraAdapter(LoraAdapter&&) noexcept = default;
LoraAdapter& LoraAdapter::operator=(LoraAdapter&&) noexcept = default;

const LoraAdapter::Edit* LoraAdapter::find(const std::string& weight) const {
  auto it = std::lower_bound(edits_.begin(), edits_.end(), weight,
                             [](const Edit& e, const std::string& w) { return e.weight.name < w; });
  return it != edits_.end() && it->weight.name == weight ? &*it : nullptr;
}

bool LoraAdapter::touches(const std::string& weight) const { return find(weight) != nullptr; }

std::vector<std::string> LoraAdapter::touched_weights() const {
  std::vector<std::string> out;
  for (const Edit& e : edits_) out.push_back(e.weight.name);
  return out;
}

bool LoraAdapter::apply(std::span<float> w, const std::string& weight) const {
  const Edit* e = find(weight);
  if (!e) throw ModelError(dir_ + ": the adapter does not edit '" + weight + "'");
  const LlamaTensor& t = e->weight;
  const int cols = std::max(t.cols, 1);
  if (w.size() != static_cast<size_t>(t.rows) * cols)
    throw ModelError("LoraAdapter::apply: '" + weight + "' buffer holds " + std::to_string(w.size()) +
                     " floats, the weight has " + std::to_string(static_cast<size_t>(t.rows) * cols));
  bool changed = e->replacement && replace(w, *e->replacement);
  if (e->a) {
    const int r = cfg_.r;
    std::vector<float> a = read_all(*e->a), b = read_all(*e->b);
    if (e->embedding) {
      // delta[vocab, dim] = s · (B · A)ᵀ = s · Aᵀ[vocab, r] · Bᵀ[r, dim] (PEFT: Embedding.get_delta_weight).
      add_low_rank(w, transposed(a, r, t.rows), transposed(b, t.cols, r), t.rows, r, t.cols, cfg_.scale());
    } else {
      add_low_rank(w, b, a, t.rows, r, t.cols, cfg_.scale());  // delta[out, in] = s · B[out, r] · A[r, in]
    }
    changed = changed || e->nonzero_delta;
  }
  return changed;
}

LoraStack::LoraStack(const std::vector<std::string>& dirs, const LlamaConfig& model)
    : applied_(dirs.size()), changed_(dirs.size(), false) {
  for (const std::string& d : dirs) adapters_.emplace_back(d, model);
}

bool LoraStack::touches(const std::string& weight) const {
  return std::any_of(adapters_.begin(), adapters_.end(), [&](const LoraAdapter& a) { return a.touches(weight); });
}

void LoraStack::apply(std::span<float> w, const std::string& weight) {
  for (size_t i = 0; i < adapters_.size(); ++i) {
    if (!adapters_[i].touches(weight)) continue;
    if (adapters_[i].apply(w, weight)) {
      changed_[i] = true;
      changed_weights_.insert(weight);
    }
    applied_[i].insert(weight);
  }
}

int LoraStack::finish() const {
  for (size_t i = 0; i < adapters_.size(); ++i) {
    // Unreachable after the up-front checks, kept so a future layout change
    // cannot silently drop part of an adapter.
    for (const std::string& w : adapters_[i].touched_weights())
      if (!applied_[i].count(w))
        throw ModelError(adapters_[i].dir() + ": adapter edit of '" + w + "' was never applied");
    if (!changed_[i])
      throw ModelError(adapters_[i].dir() + ": the adapter changes no weight of this model (each saved module " +
                       "equals the weight it replaces, and its LoRA deltas are zero)");
  }
  return static_cast<int>(changed_weights_.size());
}

}  // namespace chatradio::model
