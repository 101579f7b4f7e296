// chatradio quantize --lora on the real stories260K checkpoint: every kind of
// tensor a PEFT adapter saves (linear and embedding LoRA, modules_to_save,
// several adapters in order) gives exactly the checkpoint that quantizing a
// model merged by hand here gives; bad adapters fail before anything is written.
#include <filesystem>
#include <fstream>
#include <random>

#include "model/errors.h"
#include "model/quantizer.h"
#include "tests/quantize/quantize_testing.h"

namespace chatradio::model {
namespace {

using qtest::TempDir;
using testing::shared_path;
namespace fs = std::filesystem;

constexpr int kRank = 4;
constexpr float kScale = 2.0f;  // lora_alpha 8 / r 4
constexpr int kDim = 64, kVocab = 512, kLayers = 5;

// One adapter tensor, F32.
struct T {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::string adapter_config(const std::string& targets, const std::string& extra = "") {
  return R"({"peft_type":"LORA","r":4,"lora_alpha":8,"bias":"none","target_modules":)" + targets +
         (extra.empty() ? "" : "," + extra) + "}";
}

std::string write_adapter(const std::string& dir, const std::string& cfg, const std::vector<T>& tensors) {
  fs::create_directories(dir);
  std::ofstream(dir + "/adapter_config.json") << cfg;
  std::vector<TensorToWrite> w;
  for (const T& t : tensors) w.push_back({t.name, DType::F32, t.shape, tensor_bytes(t.values)});
  write_safetensors(dir + "/adapter_model.safetensors", w);
  return dir;
}

// Entries are multiples of 1/64 in [-1/16, 1/16] and the scale is 2, so every
// product is exact and a merge's only roundings are its additions: any merge
// that adds the rank terms in the same order is bitwise reproducible.
std::vector<float> small_values(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int> d(-4, 4);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(d(g)) / 64.0f;
  return v;
}

// "model.layers.0.self_attn.q_proj.weight" -> "base_model.model.model.layers.0.self_attn.q_proj"
std::string peft_module(const std::string& weight) { return "base_model.model." + weight.substr(0, weight.size() - 7); }

// The hand merge: a float copy of the base checkpoint's edited tensors, with
// PEFT's formulas written out as plain loops (independent of model/lora.cpp).
class HandMerge {
 public:
  explicit HandMerge(const std::string& model_dir) : dir_(model_dir), base_(model_dir) {}

  std::vector<float>& w(const std::string& name) {
    auto it = edited_.find(name);
    if (it != edited_.end()) return it->second;
    const TensorView& v = base_.get(name);
    std::vector<float>& out = edited_[name];
    out.resize(static_cast<size_t>(v.numel()));
    to_f32(out, v);
    return out;
  }
  // W[out, in] += s · B[out, r] · A[r, in]
  void linear(const std::string& name, const std::vector<float>& a, const std::vector<float>& b) {
    std::vector<float>& x = w(name);
    const int out = static_cast<int>(base_.get(name).shape[0]), in = static_cast<int>(base_.get(name).shape[1]);
    for (int i = 0; i < out; ++i)
      for (int k = 0; k < kRank; ++k)
        for (int j = 0; j < in; ++j) x[i * in + j] += (kScale * b[i * kRank + k]) * a[k * in + j];
  }
  // E[vocab, dim] += s · (B[dim, r] · A[r, vocab])ᵀ, i.e. E[v, d] += s · Σ_k A[k, v] · B[d, k]
  void embedding(const std::vector<float>& a, const std::vector<float>& b) {
    std::vector<float>& e = w("model.embed_tokens.weight");
    for (int v = 0; v < kVocab; ++v)
      for (int k = 0; k < kRank; ++k)
        for (int d = 0; d < kDim; ++d) e[v * kDim + d] += (kScale * a[k * kVocab + v]) * b[d * kRank + k];
  }
  void replace(const std::string& name, const std::vector<float>& v) { w(name) = v; }

  // The merged float checkpoint: edited tensors F32, the others byte for byte.
  void write(const std::string& out) {
    fs::create_directories(out);
    fs::copy_file(dir_ + "/config.json", out + "/config.json");
    std::vector<TensorToWrite> tensors;
    for (const std::string& n : base_.names()) {
      const TensorView& v = base_.get(n);
      auto it = edited_.find(n);
      if (it == edited_.end())
        tensors.push_back({n, v.dtype, v.shape, {v.data, v.nbytes}});
      else
        tensors.push_back({n, DType::F32, v.shape, tensor_bytes(it->second)});
    }
    write_safetensors(out + "/model.safetensors", tensors);
  }

 private:
  std::string dir_;
  Checkpoint base_;
  std::map<std::string, std::vector<float>> edited_;
};

// A LoRA pair for each weight, with its values, as PEFT saves it.
struct LinearLora {
  std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> ab;  // weight -> (A [r, in], B [out, r])
  std::vector<T> tensors() const {
    std::vector<T> t;
    for (const auto& [w, p] : ab) {
      const int in = static_cast<int>(p.first.size() / kRank), out = static_cast<int>(p.second.size() / kRank);
      t.push_back({peft_module(w) + ".lora_A.weight", {kRank, in}, p.first});
      t.push_back({peft_module(w) + ".lora_B.weight", {out, kRank}, p.second});
    }
    return t;
  }
  void merge(HandMerge& h) const {
    for (const auto& [w, p] : ab) h.linear(w, p.first, p.second);
  }
};

LinearLora qv_lora(uint32_t seed, bool with_v = true) {
  LinearLora l;
  for (int layer = 0; layer < kLayers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
    l.ab[p + "q_proj.weight"] = {small_values(kRank * kDim, seed + 2 * layer),
                                 small_values(kDim * kRank, seed + 100 + layer)};
    if (with_v)
      l.ab[p + "v_proj.weight"] = {small_values(kRank * kDim, seed + 7 * layer),
                                   small_values(32 * kRank, seed + 9 * layer)};
  }
  return l;
}

class QuantizeLora : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K-f16"); }
  // The quantized hand merge, and the same model quantized with the adapters: tensors equal bit for bit.
  void expect_same_as_hand_merge(HandMerge& h, const std::vector<std::string>& adapters, int changed) {
    const std::string n = std::to_string(run_++);
    h.write(tmp_ / ("merged" + n));
    quantize_checkpoint(tmp_ / ("from-merged" + n), tmp_ / ("merged" + n), {});
    const QuantizeResult r = quantize_checkpoint(tmp_ / ("with-lora" + n), src_, {.lora_dirs = adapters});
    EXPECT_EQ(r.n_lora_merged, changed);
    EXPECT_EQ(qtest::all_tensors(tmp_ / ("with-lora" + n)), qtest::all_tensors(tmp_ / ("from-merged" + n)));
  }
  std::map<std::string, qtest::StoredTensor> quantized(const std::vector<std::string>& adapters) {
    const std::string out = tmp_ / "q" + std::to_string(run_++);
    quantize_checkpoint(out, src_, {.lora_dirs = adapters});
    return qtest::all_tensors(out);
  }

  TempDir tmp_;
  const std::string src_ = shared_path("models/stories260K-f16");
  int run_ = 0;
};

TEST_F(QuantizeLora, LinearLoraEqualsQuantizingAHandMergedCheckpoint) {
  const LinearLora l = qv_lora(7);
  const std::string ad = write_adapter(tmp_ / "lora", adapter_config(R"(["q_proj","v_proj"])"), l.tensors());
  HandMerge h(src_);
  l.merge(h);
  expect_same_as_hand_merge(h, {ad}, 10);
  const auto with_lora = quantized({ad}), plain = quantized({});
  EXPECT_NE(with_lora.at("model.layers.2.self_attn.q_proj.qweight"),
            plain.at("model.layers.2.self_attn.q_proj.qweight"));
  EXPECT_EQ(with_lora.at("model.layers.2.self_attn.k_proj.qweight"),
            plain.at("model.layers.2.self_attn.k_proj.qweight"));
}

TEST_F(QuantizeLora, EmbeddingLoraEqualsTheHandMergedTransposedProduct) {
  // PEFT's layout: lora_embedding_A [r, vocab], lora_embedding_B [dim, r], delta = (B @ A).T * scaling.
  const std::vector<float> a = small_values(kRank * kVocab, 11), b = small_values(kDim * kRank, 12);
  const std::string ad = write_adapter(tmp_ / "emb", adapter_config(R"(["embed_tokens"])"),
                                       {{"base_model.model.model.embed_tokens.lora_embedding_A", {kRank, kVocab}, a},
                                        {"base_model.model.model.embed_tokens.lora_embedding_B", {kDim, kRank}, b}});
  HandMerge h(src_);
  h.embedding(a, b);
  expect_same_as_hand_merge(h, {ad}, 1);
  // stories260K ties lm_head to the embedding: the output stays tied (no
  // lm_head tensor), so the output layer is the merged embedding, as after
  // PEFT's merge_and_unload of a tied model.
  const auto q = quantized({ad});
  EXPECT_FALSE(q.count("lm_head.weight"));
  EXPECT_NE(q.at("model.embed_tokens.weight"), quantized({}).at("model.embed_tokens.weight"));
}

TEST_F(QuantizeLora, SavedModulesReplaceTheirTensorsTiedAndUntied) {
  // Tied: a saved embed_tokens (PEFT's saved name) and final norm (the
  // in-memory modules_to_save name) replace the base tensors.
  const std::vector<float> emb = small_values(kVocab * kDim, 21), norm = small_values(kDim, 22);
  const std::string ad =
      write_adapter(tmp_ / "mts", adapter_config(R"(["q_proj"])", R"("modules_to_save":["embed_tokens","norm"])"),
                    {{"base_model.model.model.embed_tokens.weight", {kVocab, kDim}, emb},
                     {"base_model.model.model.norm.modules_to_save.default.weight", {kDim}, norm}});
  HandMerge h(src_);
  h.replace("model.embed_tokens.weight", emb);
  h.replace("model.norm.weight", norm);
  expect_same_as_hand_merge(h, {ad}, 2);

  // Untied (the same weights plus an lm_head of their own): lm_head is
  // replaced on its own and the embedding is left alone.
  const std::string untied = tmp_ / "untied";
  fs::create_directories(untied);
  std::string cfg = qtest::read_file(src_ + "/config.json");
  const std::string tied = "\"tie_word_embeddings\": true";
  ASSERT_NE(cfg.find(tied), std::string::npos);
  cfg.replace(cfg.find(tied), tied.size(), "\"tie_word_embeddings\": false");
  std::ofstream(untied + "/config.json") << cfg;
  const Checkpoint base(src_);
  std::vector<TensorToWrite> tensors;
  for (const std::string& n : base.names()) {
    const TensorView& v = base.get(n);
    tensors.push_back({n, v.dtype, v.shape, {v.data, v.nbytes}});
  }
  const TensorView& e = base.get("model.embed_tokens.weight");
  tensors.push_back({"lm_head.weight", e.dtype, e.shape, {e.data, e.nbytes}});
  write_safetensors(untied + "/model.safetensors", tensors);

  const std::vector<float> head = small_values(kVocab * kDim, 23);
  const std::string head_ad =
      write_adapter(tmp_ / "head", adapter_config(R"(["q_proj"])", R"("modules_to_save":["lm_head"])"),
                    {{"base_model.model.lm_head.modules_to_save.default.weight", {kVocab, kDim}, head}});
  quantize_checkpoint(tmp_ / "untied-plain", untied, {});
  const QuantizeResult r = quantize_checkpoint(tmp_ / "untied-head", untied, {.lora_dirs = {head_ad}});
  EXPECT_EQ(r.n_lora_merged, 1);
  const auto plain = qtest::all_tensors(tmp_ / "untied-plain"), with_head = qtest::all_tensors(tmp_ / "untied-head");
  std::vector<uint16_t> head_f16(head.size());
  for (size_t i = 0; i < head.size(); ++i) head_f16[i] = f32_to_f16(head[i]);
  const std::span<const uint8_t> want = tensor_bytes(head_f16);
  EXPECT_EQ(with_head.at("lm_head.weight").bytes, std::vector<uint8_t>(want.begin(), want.end()));
  EXPECT_EQ(with_head.at("model.embed_tokens.weight"), plain.at("model.embed_tokens.weight"));
  // The same lm_head alone on the tied model cannot be stored: refused up front.
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp_ / "tied-head", src_, {.lora_dirs = {head_ad}}), "lm_head", "tied");
  EXPECT_FALSE(fs::exists(tmp_ / "tied-head"));
}

TEST_F(QuantizeLora, SeveralAdaptersApplyInOrderAndTheOrderMatters) {
  // A: a domain adapter (q/v LoRA, embedding LoRA). B: a task adapter (q LoRA
  // and a saved embedding).
  const LinearLora a_lin = qv_lora(31), b_lin = qv_lora(41, /*with_v=*/false);
  const std::vector<float> ea = small_values(kRank * kVocab, 32), eb = small_values(kDim * kRank, 33);
  const std::vector<float> saved = small_values(kVocab * kDim, 42);
  std::vector<T> at = a_lin.tensors();
  at.push_back({"base_model.model.model.embed_tokens.lora_embedding_A", {kRank, kVocab}, ea});
  at.push_back({"base_model.model.model.embed_tokens.lora_embedding_B", {kDim, kRank}, eb});
  std::vector<T> bt = b_lin.tensors();
  bt.push_back({"base_model.model.model.embed_tokens.weight", {kVocab, kDim}, saved});
  const std::string a = write_adapter(tmp_ / "a", adapter_config(R"(["q_proj","v_proj","embed_tokens"])"), at);
  const std::string b =
      write_adapter(tmp_ / "b", adapter_config(R"(["q_proj"])", R"("modules_to_save":["embed_tokens"])"), bt);

  HandMerge ab(src_);  // A, then B: B's saved embedding replaces A's merged one
  a_lin.merge(ab);
  ab.embedding(ea, eb);
  b_lin.merge(ab);
  ab.replace("model.embed_tokens.weight", saved);
  expect_same_as_hand_merge(ab, {a, b}, 11);

  HandMerge ba(src_);  // B, then A: A's embedding LoRA lands on B's saved embedding
  b_lin.merge(ba);
  ba.replace("model.embed_tokens.weight", saved);
  a_lin.merge(ba);
  ba.embedding(ea, eb);
  expect_same_as_hand_merge(ba, {b, a}, 11);

  EXPECT_NE(quantized({a, b}).at("model.embed_tokens.weight"), quantized({b, a}).at("model.embed_tokens.weight"));
}

TEST_F(QuantizeLora, TheCliTakesSeveralAdaptersRepeatedOrAsAList) {
  const std::string bin = qtest::chatradio_binary();
  if (!fs::exists(bin)) FAIL() << bin << " not built: build the chatradio target first";
  const std::string a = write_adapter(tmp_ / "a", adapter_config(R"(["q_proj","v_proj"])"), qv_lora(51).tensors());
  const std::string b = write_adapter(tmp_ / "b", adapter_config(R"(["q_proj"])"), qv_lora(61, false).tensors());
  const std::string err = tmp_ / "stderr.txt";
  auto run = [&](const std::string& args) {
    return qtest::exit_code(bin + " quantize --model " + src_ + " " + args + " >/dev/null 2>" + err);
  };
  ASSERT_EQ(run("--out " + tmp_ / "rep" + " --lora " + a + " --lora " + b), 0) << qtest::read_file(err);
  EXPECT_NE(qtest::read_file(err).find("10 weights changed by 2 LoRA adapters"), std::string::npos)
      << qtest::read_file(err);
  ASSERT_EQ(run("--out " + tmp_ / "list" + " --lora " + a + "," + b), 0) << qtest::read_file(err);
  const auto api = quantized({a, b});
  EXPECT_EQ(qtest::all_tensors(tmp_ / "rep"), api);
  EXPECT_EQ(qtest::all_tensors(tmp_ / "list"), api);
  EXPECT_EQ(run("--out " + tmp_ / "bad" + " --lora " + a + ",," + b), 2);
  EXPECT_NE(qtest::read_file(err).find("empty adapter directory"), std::string::npos) << qtest::read_file(err);
  EXPECT_EQ(run("--out " + tmp_ / "bad" + " --lora " + a + " --lora " + tmp_ / "missing"), 1);
  EXPECT_NE(qtest::read_file(err).find("missing"), std::string::npos) << qtest::read_file(err);
  EXPECT_FALSE(fs::exists(tmp_ / "bad"));
  ASSERT_EQ(qtest::exit_code(bin + " quantize --help >" + err), 0);
  for (const char* s : {"lora_embedding_A/B", "modules_to_save", "in order", "tied", "changes nothing"})
    EXPECT_NE(qtest::read_file(err).find(s), std::string::npos) << s;
}

TEST_F(QuantizeLora, BadAdaptersAreRefusedBeforeAnythingIsWritten) {
  const LinearLora l = qv_lora(71);
  const std::string qv = R"(["q_proj","v_proj"])";
  const std::string wq = write_adapter(tmp_ / "wq", adapter_config(R"(["q_proj","wq"])"), l.tensors());
  std::vector<T> dora = l.tensors();
  dora.push_back({peft_module("model.layers.0.self_attn.q_proj.weight") + ".lora_magnitude_vector",
                  {kDim},
                  small_values(kDim, 1)});
  const std::string magnitude = write_adapter(tmp_ / "dora", adapter_config(qv), dora);
  const std::string l7 = peft_module("model.layers.7.self_attn.q_proj.weight");
  const std::string layer7 = write_adapter(tmp_ / "l7", adapter_config(qv),
                                           {{l7 + ".lora_A.weight", {kRank, kDim}, small_values(kRank * kDim, 2)},
                                            {l7 + ".lora_B.weight", {kDim, kRank}, small_values(kRank * kDim, 3)}});
  const std::string vocab = write_adapter(
      tmp_ / "vocab", adapter_config(qv),
      {{"base_model.model.model.embed_tokens.weight", {kVocab + 1, kDim}, small_values((kVocab + 1) * kDim, 4)}});
  const std::string empty = write_adapter(tmp_ / "empty", adapter_config(qv), {});
  const std::string fine = write_adapter(tmp_ / "fine", adapter_config(qv), l.tensors());

  const std::string out = tmp_ / "out";
  EXPECT_MODEL_ERROR(quantize_checkpoint(out, src_, {.lora_dirs = {wq}}), "target_modules", "'wq'");
  EXPECT_MODEL_ERROR(quantize_checkpoint(out, src_, {.lora_dirs = {magnitude}}), "lora_magnitude_vector");
  EXPECT_MODEL_ERROR(quantize_checkpoint(out, src_, {.lora_dirs = {layer7}}), "model.layers.7.self_attn.q_proj.weight",
                     "lacks");
  EXPECT_MODEL_ERROR(quantize_checkpoint(out, src_, {.lora_dirs = {vocab}}), "[513, 64]", "[512, 64]");
  EXPECT_MODEL_ERROR(quantize_checkpoint(out, src_, {.lora_dirs = {empty}}), "change nothing");
  // The first adapter is fine, the second is not: still nothing written.
  EXPECT_MODEL_ERROR(quantize_checkpoint(out, src_, {.lora_dirs = {fine, layer7}}), "lacks");
  EXPECT_FALSE(fs::exists(out)) << "nothing is created before the checks pass";
}

TEST_F(QuantizeLora, AnAdapterThatChangesNothingFailsLateAndLeavesTheOutputAsFound) {
  // A saved norm equal to the base one is found only once applied, after the
  // earlier tensors are written.
  const Checkpoint base(src_);
  std::vector<float> norm(kDim);
  to_f32(norm, base.get("model.norm.weight"));
  const std::string same =
      write_adapter(tmp_ / "same", adapter_config(R"(["q_proj"])", R"("modules_to_save":["norm"])"),
                    {{"base_model.model.model.norm.weight", {kDim}, norm}});
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp_ / "out", src_, {.lora_dirs = {same}}), "same", "changes no weight");
  EXPECT_FALSE(fs::exists(tmp_ / "out"));
  fs::create_directories(tmp_ / "empty");
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp_ / "empty", src_, {.lora_dirs = {same}}), "changes no weight");
  EXPECT_TRUE(fs::is_directory(tmp_ / "empty"));
  EXPECT_TRUE(fs::is_empty(tmp_ / "empty")) << "a directory that existed is kept, emptied of our files";
}

}  // namespace
}  // namespace chatradio::model
