// Strict checkpoints (issue 10, items 1 and 2): non-finite weights, bytes no
// tensor covers, tensors the model does not use and a config whose layer
// count differs from the checkpoint's are each refused with a message naming
// the culprit, at load and by `chatradio quantize`. The models are synth
// stories260k checkpoints (no ../shared needed), rewritten with one defect.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "helpers.h"
#include "model/errors.h"
#include "model/llama.h"
#include "model/quantizer.h"
#include "model/safetensors.h"
#include "model/synth.h"

namespace chatradio::model {
namespace {

using chatradio::testing::as_bytes;
using chatradio::testing::st_bytes;
using chatradio::testing::TempDir;
using chatradio::testing::write_file;
namespace fs = std::filesystem;

// One tensor of a checkpoint, owned, so a test can change it and write it back.
struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<OwnedTensor> read_all(const std::string& dir) {
  const Checkpoint ck(dir);
  std::vector<OwnedTensor> out;
  for (const std::string& n : ck.names()) {
    const TensorView& v = ck.get(n);
    out.push_back({n, v.dtype, v.shape, std::vector<uint8_t>(v.data, v.data + v.nbytes)});
  }
  return out;
}

void write_all(const std::string& dir, const std::vector<OwnedTensor>& tensors) {
  std::vector<TensorToWrite> w;
  for (const OwnedTensor& t : tensors) w.push_back({t.name, t.dtype, t.shape, t.bytes});
  write_safetensors(dir + "/model.safetensors", w);
}

OwnedTensor& find(std::vector<OwnedTensor>& ts, const std::string& name) {
  for (OwnedTensor& t : ts)
    if (t.name == name) return t;
  throw std::runtime_error("test checkpoint lacks " + name);
}

// Re-encodes a float tensor in another float dtype (values as float32 first).
void convert(OwnedTensor& t, DType to) {
  const TensorView src{t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size(), "test"};
  std::vector<float> f(static_cast<size_t>(src.numel()));
  to_f32(f, src);
  t.dtype = to;
  t.bytes.clear();
  for (float x : f) {
    uint8_t b[4];
    const size_t n = to == DType::F32 ? 4 : 2;
    if (to == DType::F32) std::memcpy(b, &x, 4);
    const uint16_t h = to == DType::F16 ? f32_to_f16(x) : f32_to_bf16(x);
    if (to != DType::F32) std::memcpy(b, &h, 2);
    t.bytes.insert(t.bytes.end(), b, b + n);
  }
}

// Element i of a float tensor set to v, bits stored as its dtype encodes v.
void poke(OwnedTensor& t, int64_t i, float v) {
  if (t.dtype == DType::F32) {
    std::memcpy(t.bytes.data() + 4 * i, &v, 4);
    return;
  }
  const uint16_t h = t.dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
  std::memcpy(t.bytes.data() + 2 * i, &h, 2);
}

// A synth stories260k checkpoint in DIR (tied embeddings, 5 layers).
std::string synth_model(const TempDir& tmp, SynthFormat format, const std::string& name = "m") {
  const std::string dir = tmp / name;
  synth_checkpoint(dir, {.shape = "stories260k", .format = format, .seed = 7});
  return dir;
}

// Rewrites the checkpoint in dir through `edit`.
void rewrite(const std::string& dir, const std::function<void(std::vector<OwnedTensor>&)>& edit) {
  std::vector<OwnedTensor> ts = read_all(dir);
  edit(ts);
  fs::remove(dir + "/model.safetensors");
  write_all(dir, ts);
}

void load(const std::string& dir, WeightFormat format = WeightFormat::kAsStored) {
  const LlamaConfig cfg = load_llama_config(dir);
  load_llama_weights(cfg, dir, {format, 128});
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// --- Item 1: non-finite weights.

TEST(NonFinite, ToF32AndCheckFiniteNameTheElement) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (float v : {kNaN, kInf, -kInf}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " " + std::to_string(v));
      OwnedTensor t{"w", DType::F32, {3, 4}, as_bytes(std::vector<float>(12, 0.25f))};
      convert(t, dt);
      poke(t, 6, v);  // row 1, column 2
      const TensorView view{t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size(), "f.safetensors"};
      const char* what = v != v ? "NaN" : v > 0 ? "+Inf" : "-Inf";
      std::vector<float> out(12);
      EXPECT_MODEL_ERROR(to_f32(out, view), "f.safetensors", "'w'", "element 6 [1, 2]", what);
      EXPECT_MODEL_ERROR(check_finite(view), "'w'", "element 6 [1, 2]", what);
      // A slice reports the index in the whole tensor; a slice without it converts.
      std::vector<float> part(4);
      EXPECT_MODEL_ERROR(to_f32(part, view, 4), "element 6 [1, 2]");
      to_f32(part, view, 8);
      EXPECT_EQ(part, std::vector<float>(4, 0.25f));
    }
  }
}

TEST(NonFinite, EveryFloatDtypeIsRefusedAtLoadNamingTensorAndElement) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kF16);
  const std::string name = "model.layers.2.mlp.down_proj.weight";  // [64, 172]
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (float v : {kNaN, kInf, -kInf}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " " + std::to_string(v));
      rewrite(dir, [&](std::vector<OwnedTensor>& ts) {
        OwnedTensor& t = find(ts, name);
        if (t.dtype != dt) convert(t, dt);
        poke(t, 7 * 172 + 100, v);
      });
      const char* what = v != v ? "NaN" : v > 0 ? "+Inf" : "-Inf";
      EXPECT_MODEL_ERROR(load(dir), name, "element 1304 [7, 100]", what);
      // Int4 at load used to quantize a NaN as 0 and an Inf to the group's edge.
      EXPECT_MODEL_ERROR(load(dir, WeightFormat::kInt4), name, "element 1304 [7, 100]", what);
      rewrite(dir, [&](std::vector<OwnedTensor>& ts) { poke(find(ts, name), 7 * 172 + 100, 0.01f); });
    }
  }
  load(dir);  // the repaired file loads again
}

TEST(NonFinite, NormsAndEmbeddingAreChecked) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kF16);
  for (const char* name : {"model.norm.weight", "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"}) {
    SCOPED_TRACE(name);
    rewrite(dir, [&](std::vector<OwnedTensor>& ts) { poke(find(ts, name), 3, kNaN); });
    EXPECT_MODEL_ERROR(load(dir), name, "element 3", "NaN");
    // Int4 reads an F16 embedding straight from the mapping: checked there too.
    EXPECT_MODEL_ERROR(load(dir, WeightFormat::kInt4), name, "element 3", "NaN");
    rewrite(dir, [&](std::vector<OwnedTensor>& ts) { poke(find(ts, name), 3, 1.0f); });
  }
}

TEST(NonFinite, GptqScalesAndTheF16EmbeddingAreChecked) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kInt4);
  load(dir);
  const std::string scales = "model.layers.1.self_attn.o_proj.scales";  // F16 [1, 64]
  rewrite(dir, [&](std::vector<OwnedTensor>& ts) { poke(find(ts, scales), 5, -kInf); });
  EXPECT_MODEL_ERROR(load(dir), scales, "element 5 [0, 5]", "-Inf");
  rewrite(dir, [&](std::vector<OwnedTensor>& ts) {
    poke(find(ts, scales), 5, 0.01f);
    poke(find(ts, "model.embed_tokens.weight"), 64 * 9 + 1, kNaN);
  });
  EXPECT_MODEL_ERROR(load(dir), "model.embed_tokens.weight", "element 577 [9, 1]", "NaN");
}

TEST(NonFinite, QuantizeRefusesThemAndWritesNothing) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kF16);
  rewrite(dir, [&](std::vector<OwnedTensor>& ts) { poke(find(ts, "model.layers.4.mlp.up_proj.weight"), 0, kNaN); });
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp / "q", dir, {}), "model.layers.4.mlp.up_proj.weight", "element 0 [0, 0]",
                     "NaN");
  EXPECT_FALSE(fs::exists(tmp / "q"));
}

// --- Item 2: bytes no tensor covers.

class Coverage : public ::testing::Test {
 protected:
  std::string path() const { return dir_ / "c.safetensors"; }
  void open(const std::string& header, const std::string& data) {
    write_file(path(), st_bytes(header, data));
    SafetensorsFile f(path());
  }
  TempDir dir_;
};

TEST_F(Coverage, TrailingBytesAfterTheLastTensor) {
  const std::string h = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  open(h, std::string(8, '\0'));
  EXPECT_MODEL_ERROR(open(h, std::string(11, '\0')), path(), "3 trailing bytes", "'a' ends at 8", "11");
  EXPECT_MODEL_ERROR(open("{}", std::string(5, '\0')), path(), "5 trailing bytes");
}

TEST_F(Coverage, HolesBetweenAndBeforeTensors) {
  EXPECT_MODEL_ERROR(open(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                              "b": {"dtype": "U8", "shape": [4], "data_offsets": [6, 10]}})",
                          std::string(10, '\0')),
                     path(), "[4, 6)", "between tensor 'a' and tensor 'b'", "hole");
  EXPECT_MODEL_ERROR(open(R"({"b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})", std::string(6, '\0')),
                     path(), "[0, 2)", "before tensor 'b'", "hole");
  // Zero-byte tensors claim no bytes: they neither fill a hole nor make one.
  EXPECT_MODEL_ERROR(open(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                              "z": {"dtype": "U8", "shape": [0], "data_offsets": [5, 5]},
                              "b": {"dtype": "U8", "shape": [4], "data_offsets": [6, 10]}})",
                          std::string(10, '\0')),
                     "between tensor 'a' and tensor 'b'");
  open(R"({"z": {"dtype": "U8", "shape": [0], "data_offsets": [3, 3]},
           "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})",
       std::string(4, '\0'));
}

TEST(StrictCheckpoint, ABytePastTheEndOfARealCheckpointIsRefused) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kF16);
  {
    std::ofstream out(dir + "/model.safetensors", std::ios::binary | std::ios::app);
    out.put('\0');
  }
  EXPECT_MODEL_ERROR(load(dir), "model.safetensors", "1 trailing bytes");
}

// --- Item 2: tensors the model does not use, layer counts.

TEST(StrictCheckpoint, UnusedTensorsAreNamed) {
  TempDir tmp;
  for (SynthFormat format : {SynthFormat::kF16, SynthFormat::kInt4}) {
    const std::string dir = synth_model(tmp, format, format == SynthFormat::kF16 ? "f" : "q");
    rewrite(dir, [](std::vector<OwnedTensor>& ts) {
      ts.push_back({"model.layers.0.self_attn.q_bias", DType::F32, {1}, std::vector<uint8_t>(4, 0)});
    });
    EXPECT_MODEL_ERROR(load(dir), dir, "1 tensor(s) the model does not use: model.layers.0.self_attn.q_bias");
    rewrite(dir, [](std::vector<OwnedTensor>& ts) {
      for (int i = 0; i < 6; ++i) ts.push_back({"extra." + std::to_string(i), DType::U8, {1}, {0}});
    });
    EXPECT_MODEL_ERROR(load(dir), "7 tensor(s)", "extra.0, extra.1", "(2 more)");
  }
}

TEST(StrictCheckpoint, TiedModelWithAnLmHeadIsRefusedWithTheReason) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kF16);
  rewrite(dir, [](std::vector<OwnedTensor>& ts) {
    OwnedTensor head = find(ts, "model.embed_tokens.weight");
    head.name = "lm_head.weight";
    ts.push_back(head);
  });
  EXPECT_MODEL_ERROR(load(dir), "lm_head.weight", "tie_word_embeddings = true");
}

TEST(StrictCheckpoint, RotaryInvFreqBuffersAreTolerated) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kF16);
  rewrite(dir, [](std::vector<OwnedTensor>& ts) {
    ts.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::F32, {4}, std::vector<uint8_t>(16, 0)});
  });
  load(dir);
  const QuantizeResult r = quantize_checkpoint(tmp / "q", dir, {});
  EXPECT_EQ(r.ignored, (std::vector<std::string>{"model.layers.0.self_attn.rotary_emb.inv_freq"}));
}

TEST(StrictCheckpoint, ConfigLayerCountMustEqualTheCheckpoints) {
  TempDir tmp;
  for (SynthFormat format : {SynthFormat::kF16, SynthFormat::kInt4}) {
    const std::string dir = synth_model(tmp, format, format == SynthFormat::kF16 ? "f" : "q");
    LlamaConfig cfg = load_llama_config(dir);
    const std::optional<QuantizeConfig> quant =
        format == SynthFormat::kInt4 ? std::optional(load_quantize_config(dir)) : std::nullopt;
    for (int layers : {4, 6, 1}) {
      SCOPED_TRACE(layers);
      cfg.num_hidden_layers = layers;
      write_file(dir + "/config.json", llama_config_json(cfg, quant));
      EXPECT_MODEL_ERROR(load(dir), "num_hidden_layers = " + std::to_string(layers), "holds 5 layers",
                         "model.layers.0 to model.layers.4",
                         layers < 5 ? "silently dropped" : "missing layers have no weights");
      if (format == SynthFormat::kF16) {
        EXPECT_MODEL_ERROR(quantize_checkpoint(tmp / "out", dir, {}), "num_hidden_layers = " + std::to_string(layers),
                           "holds 5 layers");
        EXPECT_FALSE(fs::exists(tmp / "out"));
      }
    }
  }
}

TEST(StrictCheckpoint, QuantizeRefusesUnusedTensors) {
  TempDir tmp;
  const std::string dir = synth_model(tmp, SynthFormat::kF16);
  rewrite(dir, [](std::vector<OwnedTensor>& ts) {
    ts.push_back({"model.layers.5.input_layernorm.weight", DType::F16, {64}, std::vector<uint8_t>(128, 0)});
  });
  // A sixth layer's tensor: counted as a layer the config lacks.
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp / "q", dir, {}), "holds 6 layers");
  rewrite(dir, [](std::vector<OwnedTensor>& ts) {
    find(ts, "model.layers.5.input_layernorm.weight").name = "model.visual_proj.weight";
  });
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp / "q", dir, {}), "model.visual_proj.weight", "does not use");
  EXPECT_FALSE(fs::exists(tmp / "q"));
}

}  // namespace
}  // namespace chatradio::model
