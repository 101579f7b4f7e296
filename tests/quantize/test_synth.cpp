// chatradio synth: random checkpoints of real shapes load, run, have
// realistic statistics and are reproducible from the seed.
#include <cmath>
#include <cstring>
#include <filesystem>

#include "model/errors.h"
#include "model/gptq.h"
#include "model/synth.h"
#include "tests/quantize/quantize_testing.h"

namespace chatradio::model {
namespace {

using qtest::TempDir;
namespace fs = std::filesystem;

struct Stats {
  double mean = 0, std = 0;
};
Stats stats_of(const std::vector<float>& v) {
  double s = 0, s2 = 0;
  for (float x : v) {
    s += x;
    s2 += static_cast<double>(x) * x;
  }
  const double n = static_cast<double>(v.size());
  return {s / n, std::sqrt(s2 / n - (s / n) * (s / n))};
}

std::vector<float> f32_of(const TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.numel()));
  to_f32(out, v);
  return out;
}

TEST(Synth, Int4AndF16CheckpointsLoadAndRun) {
  TempDir tmp;
  for (SynthFormat f : {SynthFormat::kInt4, SynthFormat::kF16}) {
    const std::string out = tmp / (f == SynthFormat::kInt4 ? "int4" : "f16");
    const SynthResult r = synth_checkpoint(out, {.shape = "stories260k", .format = f, .seed = 3});
    EXPECT_EQ(r.files.back(), "config.json");
    const auto m = CpuLlama::load(out, {});
    EXPECT_EQ(m->config().hidden_size, 64);
    EXPECT_EQ(m->config().num_key_value_heads, 4);
    EXPECT_TRUE(m->config().tie_word_embeddings);
    EXPECT_EQ(m->weights().layers[4].down.is_int4(), f == SynthFormat::kInt4);
    const std::vector<float> logits = qtest::prompt_logits(*m, {1, 5, 9, 300, 42});
    for (float x : logits) ASSERT_TRUE(std::isfinite(x));
    EXPECT_NE(logits[0], logits[1]);
  }
}

TEST(Synth, WeightsLookLikeATrainedLlamas) {
  TempDir tmp;
  synth_checkpoint(tmp / "q", {.shape = "stories260k", .seed = 1});
  synth_checkpoint(tmp / "f", {.shape = "stories260k", .format = SynthFormat::kF16, .seed = 1});
  const Checkpoint q(tmp / "q"), f(tmp / "f");
  // int4: dequantize a linear through the same code the loader trusts.
  const std::string p = "model.layers.2.mlp.down_proj";
  const GptqShape s = gptq_shape(172, 64, 128);
  const GptqView v = gptq_view(p, q.get(p + ".qweight"), q.get(p + ".qzeros"), q.get(p + ".scales"),
                               &q.get(p + ".g_idx"), s);
  EXPECT_FALSE(gptq_is_act_order(v));
  std::vector<float> w(64 * 172);  // [out, in]
  gptq_dequantize(w.data(), v);
  const Stats ws = stats_of(w);
  EXPECT_NEAR(ws.std, 0.02, 0.002);
  EXPECT_NEAR(ws.mean, 0.0, 0.002);
  // Padding inputs 172..175 (nibbles 4..7 of word row 21) hold the zero point: exact 0.
  const TensorView& qw = q.get(p + ".qweight");
  const TensorView& qz = q.get(p + ".qzeros");
  for (int o = 0; o < 64; ++o) {
    uint32_t word, zw;
    std::memcpy(&word, qw.data + (21 * 64 + o) * 4, 4);
    std::memcpy(&zw, qz.data + (1 * 8 + o / 8) * 4, 4);  // group 1 holds inputs 128..175
    const uint32_t zero = ((zw >> (4 * (o % 8))) & 15) + 1;
    for (int j = 4; j < 8; ++j) ASSERT_EQ((word >> (4 * j)) & 15, zero) << o;
  }
  EXPECT_NEAR(stats_of(f32_of(q.get("model.embed_tokens.weight"))).std, 0.02, 0.002);
  const Stats norm = stats_of(f32_of(f.get("model.layers.1.input_layernorm.weight")));
  EXPECT_NEAR(norm.mean, 1.0, 0.01);
  const Stats lin = stats_of(f32_of(f.get("model.layers.0.mlp.gate_proj.weight")));
  EXPECT_NEAR(lin.std, 0.02, 0.002);
  EXPECT_NEAR(lin.mean, 0.0, 0.002);
  EXPECT_EQ(f.get("model.layers.0.mlp.gate_proj.weight").dtype, DType::F16);
}

TEST(Synth, TheSeedDeterminesEveryByte) {
  TempDir tmp;
  const std::string tok = testing::shared_path("models/stories260K/tokenizer.model");
  const bool have_tok = fs::exists(tok);
  auto make = [&](const std::string& name, uint64_t seed, uint64_t shard) {
    synth_checkpoint(tmp / name, {.shape = "stories260k", .seed = seed, .tokenizer = have_tok ? tok : "",
                                  .max_shard_bytes = shard});
    return tmp / name;
  };
  const std::string a = make("a", 42, CheckpointWriter::kDefaultMaxShardBytes);
  const std::string b = make("b", 42, CheckpointWriter::kDefaultMaxShardBytes);
  const std::string c = make("c", 43, CheckpointWriter::kDefaultMaxShardBytes);
  const std::string sharded = make("s", 42, 50'000);
  for (const char* file : {"model.safetensors", "config.json", "quantize_config.json"})
    EXPECT_EQ(qtest::read_file(a + "/" + file), qtest::read_file(b + "/" + file)) << file;
  EXPECT_NE(qtest::read_file(a + "/model.safetensors"), qtest::read_file(c + "/model.safetensors"));
  // Each tensor has its own generator: sharding changes files, not values.
  EXPECT_TRUE(fs::exists(sharded + "/model.safetensors.index.json"));
  EXPECT_EQ(qtest::all_tensors(a), qtest::all_tensors(sharded));
  if (have_tok) {
    EXPECT_EQ(qtest::read_file(a + "/tokenizer.model"), qtest::read_file(tok));
  }
}

TEST(Synth, ShapesMatchTheRealModels) {
  const LlamaConfig l7 = *synth_shape("llama2-7b");
  EXPECT_EQ(l7.hidden_size, 4096);
  EXPECT_EQ(l7.intermediate_size, 11008);
  EXPECT_EQ(l7.num_hidden_layers, 32);
  EXPECT_EQ(l7.num_key_value_heads, 32);
  EXPECT_EQ(l7.max_position_embeddings, 4096);
  EXPECT_FALSE(l7.tie_word_embeddings);
  const LlamaConfig tl = *synth_shape("tinyllama-1.1b");
  EXPECT_EQ(tl.num_key_value_heads, 4);
  EXPECT_EQ(tl.num_hidden_layers, 22);
  EXPECT_EQ(synth_shape("llama2-13b")->hidden_size, 5120);
  EXPECT_FALSE(synth_shape("gpt2").has_value());
  // Sizes without writing anything: 7B int4 is ~3.9 GB, TinyLlama f16 ~2.2 GB.
  auto total = [](const LlamaConfig& c, bool int4) {
    uint64_t n = 0;
    for (const TensorSpec& s : checkpoint_specs(llama_tensors(c), int4, 128)) n += tensor_nbytes(s, "x");
    return static_cast<double>(n);
  };
  EXPECT_NEAR(total(l7, true), 3.89e9, 0.05e9);
  EXPECT_NEAR(total(tl, false), 2.2e9, 0.05e9);
  // The config round-trips through the loader's parser.
  const LlamaConfig back = parse_llama_config(llama_config_json(tl, std::nullopt), "config.json");
  EXPECT_EQ(back.num_key_value_heads, 4);
  EXPECT_EQ(back.rms_norm_eps, 1e-5f);
  EXPECT_EQ(back.eos_token_id, 2);
}

TEST(Synth, BadRequestsFailBeforeWriting) {
  TempDir tmp;
  EXPECT_MODEL_ERROR(synth_checkpoint(tmp / "x", {.shape = "llama3-8b"}), "llama3-8b", "llama2-7b");
  EXPECT_MODEL_ERROR(synth_checkpoint(tmp / "x", {.shape = "stories260k", .group_size = 100}), "100");
  EXPECT_MODEL_ERROR(synth_checkpoint(tmp / "x", {.shape = "stories260k", .tokenizer = tmp / "none.model"}),
                     "none.model");
  EXPECT_FALSE(fs::exists(tmp / "x"));
}

}  // namespace
}  // namespace chatradio::model
