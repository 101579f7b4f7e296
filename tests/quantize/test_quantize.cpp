// chatradio quantize on the real stories260K checkpoints: the GPTQ output is
// exactly what load-time int4 quantization computes, keeps perplexity close
// to float, and fails cleanly (LoRA adapters: test_lora_quantize.cpp).
#include <cstring>
#include <filesystem>
#include <fstream>

#include "model/errors.h"
#include "model/generate.h"
#include "model/quantize_config.h"
#include "model/quantizer.h"
#include "model/scoring.h"
#include "model/tokenizer.h"
#include "tests/quantize/quantize_testing.h"

namespace chatradio::model {
namespace {

using qtest::TempDir;
using testing::shared_path;
namespace fs = std::filesystem;

bool same_q4(const kernels::cpu::Q4Matrix& a, const kernels::cpu::Q4Matrix& b) {
  return a.n == b.n && a.k == b.k && a.n_panels == b.n_panels && a.k_blocks == b.k_blocks &&
         a.group_blocks == b.group_blocks && a.n_groups == b.n_groups && a.qs.size() == b.qs.size() &&
         std::memcmp(a.qs.data(), b.qs.data(), a.qs.size() * sizeof(a.qs[0])) == 0 && a.scales == b.scales &&
         a.zeros == b.zeros && a.perm == b.perm;
}

void expect_same_weights(const LlamaWeights& a, const LlamaWeights& b) {
  EXPECT_EQ(a.embed_f16, b.embed_f16);
  EXPECT_EQ(a.final_norm, b.final_norm);
  EXPECT_TRUE(same_q4(a.lm_head.q4, b.lm_head.q4));
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const LayerWeights &x = a.layers[l], &y = b.layers[l];
    EXPECT_EQ(x.attn_norm, y.attn_norm) << l;
    EXPECT_EQ(x.ffn_norm, y.ffn_norm) << l;
    const Linear* xs[] = {&x.q, &x.k, &x.v, &x.o, &x.gate, &x.up, &x.down};
    const Linear* ys[] = {&y.q, &y.k, &y.v, &y.o, &y.gate, &y.up, &y.down};
    for (int i = 0; i < 7; ++i) {
      EXPECT_TRUE(xs[i]->is_int4()) << l << "/" << i;
      EXPECT_TRUE(same_q4(xs[i]->q4, ys[i]->q4)) << "layer " << l << " linear " << i;
    }
  }
}

const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378, 434, 426, 349, 306, 262, 285, 276, 423, 275};

TEST(Quantize, OutputEqualsLoadTimeInt4Bitwise) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K-f16");
  const std::string src = shared_path("models/stories260K-f16");
  for (int group : {128, 32, -1}) {
    TempDir tmp;
    const std::string out = tmp / "q";
    const QuantizeResult r = quantize_checkpoint(out, src, {.group_size = group});
    EXPECT_EQ(r.n_quantized, 5 * 7);
    EXPECT_EQ(r.n_f16, 1 + 5 * 2 + 1);  // embed, norms; lm_head is tied
    EXPECT_TRUE(r.ignored.empty());
    EXPECT_TRUE(is_gptq_checkpoint(out));
    EXPECT_EQ(load_quantize_config(out).group_size, group);

    const auto gptq = CpuLlama::load(out, {});
    const auto at_load = CpuLlama::load(src, {}, {WeightFormat::kInt4, group});
    expect_same_weights(gptq->weights(), at_load->weights());
    const std::vector<float> a = qtest::prompt_logits(*gptq, kPrompt), b = qtest::prompt_logits(*at_load, kPrompt);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "group " << group;
  }
}

// Issue 10 item 12: for the tied-embedding float32 stories260K, --quantize
// int4 used to quantize lm_head from the float32 embedding while a reloaded
// quantize output quantized it from the F16 copy it stores (and read norms in
// float32 vs F16), so the two disagreed. Both now take lm_head and the norms
// through F16, the only form the quantized checkpoint can hold them in.
TEST(Quantize, TiedF32ModelAtLoadEqualsReloadedOutputLmHeadAndGreedyText) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  TempDir tmp;
  const std::string src = shared_path("models/stories260K"), out = tmp / "q";
  ASSERT_TRUE(load_llama_config(src).tie_word_embeddings);
  quantize_checkpoint(out, src, {});
  const auto gptq = CpuLlama::load(out, {.n_kv_blocks = 32});
  const auto at_load = CpuLlama::load(src, {.n_kv_blocks = 32}, {WeightFormat::kInt4, 128});
  ASSERT_TRUE(gptq->weights().lm_head.is_int4());
  EXPECT_TRUE(same_q4(gptq->weights().lm_head.q4, at_load->weights().lm_head.q4)) << "packed lm_head differs";
  expect_same_weights(gptq->weights(), at_load->weights());
  const std::vector<int32_t> bos = {1};
  const GenerateResult a = generate_one(*gptq, bos, 200, {}), b = generate_one(*at_load, bos, 200, {});
  EXPECT_GT(a.tokens.size(), 50u);
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST(Quantize, StandardLayoutConfigAndSideFiles) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  TempDir tmp;
  const std::string src = shared_path("models/stories260K"), out = tmp / "q";
  const QuantizeResult r = quantize_checkpoint(out, src, {.group_size = 64, .sym = true});
  uint64_t src_bytes = 0;
  const Checkpoint in(src);
  for (const std::string& n : in.names()) src_bytes += in.get(n).nbytes;
  EXPECT_EQ(r.in_bytes, src_bytes);

  const Checkpoint ck(out);
  const TensorView& qw = ck.get("model.layers.0.mlp.down_proj.qweight");
  EXPECT_EQ(qw.dtype, DType::I32);
  EXPECT_EQ(qw.shape, (std::vector<int64_t>{176 / 8, 64}));  // in 172 padded to 176
  EXPECT_EQ(ck.get("model.layers.0.mlp.down_proj.qzeros").shape, (std::vector<int64_t>{3, 8}));
  EXPECT_EQ(ck.get("model.layers.0.mlp.down_proj.scales").dtype, DType::F16);
  EXPECT_EQ(ck.get("model.layers.0.mlp.down_proj.g_idx").shape, (std::vector<int64_t>{176}));
  EXPECT_FALSE(ck.has("model.layers.0.mlp.down_proj.weight"));
  EXPECT_EQ(ck.get("model.embed_tokens.weight").dtype, DType::F16);
  EXPECT_EQ(ck.get("model.layers.3.input_layernorm.weight").dtype, DType::F16);
  EXPECT_FALSE(ck.has("lm_head.weight"));  // tied

  const QuantizeConfig q = load_quantize_config(out);
  EXPECT_EQ(q.group_size, 64);
  EXPECT_TRUE(q.sym);
  EXPECT_FALSE(q.desc_act);
  const std::string cfg = qtest::read_file(out + "/config.json");
  EXPECT_NE(cfg.find("\"torch_dtype\": \"float16\""), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("\"quantization_config\""), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("\"hidden_act\": \"silu\""), std::string::npos) << "other fields are kept";
  const LlamaConfig a = load_llama_config(src), b = load_llama_config(out);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(qtest::read_file(out + "/tokenizer.model"), qtest::read_file(src + "/tokenizer.model"));
  EXPECT_FALSE(fs::exists(out + "/LICENSE")) << "only model files are copied";
}

TEST(Quantize, PerplexityStaysWithinTwentyPercentOfFloat) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  TempDir tmp;
  const std::string src = shared_path("models/stories260K"), out = tmp / "q";
  quantize_checkpoint(out, src, {});
  const Tokenizer tok = Tokenizer::load(out + "/tokenizer.model");
  const std::vector<int32_t> ids = tok.encode(qtest::read_file(std::string(CHATRADIO_SOURCE_DIR) +
                                                               "/tests/data/heldout_story.txt"));
  ASSERT_GT(ids.size(), 100u);
  auto ppl = [&](const std::string& dir) {
    const auto m = CpuLlama::load(dir, {.n_kv_blocks = 32, .kv_block_size = 16});
    return perplexity(*m, ids, 512).perplexity();
  };
  const double f = ppl(src), q = ppl(out);
  EXPECT_GT(q, 1.0);
  EXPECT_LT(q, 1.2 * f) << "float " << f << ", int4 " << q;
}

TEST(Quantize, ShardedOutputLoadsToTheSameModel) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K-f16");
  TempDir tmp;
  const std::string src = shared_path("models/stories260K-f16");
  const QuantizeResult one = quantize_checkpoint(tmp / "one", src, {});
  const QuantizeResult many = quantize_checkpoint(tmp / "many", src, {.max_shard_bytes = 40'000});
  EXPECT_EQ(one.files.front(), "model.safetensors");
  EXPECT_TRUE(fs::exists(tmp / "many/model.safetensors.index.json"));
  EXPECT_GT(many.files.size(), 4u) << "several shards + index + side files";
  EXPECT_FALSE(fs::exists(tmp / "many/model.safetensors"));
  EXPECT_EQ(qtest::all_tensors(tmp / "one"), qtest::all_tensors(tmp / "many"));
}

TEST(Quantize, DropsNonLlamaTensorsAndRefusesGptqInput) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K-f16");
  TempDir tmp;
  const std::string src = shared_path("models/stories260K-f16"), extra = tmp / "extra";
  // Older HF exports carry rotary_emb.inv_freq buffers; they are not weights.
  fs::create_directories(extra);
  fs::copy_file(src + "/config.json", extra + "/config.json");
  const Checkpoint base(src);
  std::vector<TensorToWrite> tensors;
  for (const std::string& n : base.names()) {
    const TensorView& v = base.get(n);
    tensors.push_back({n, v.dtype, v.shape, {v.data, v.nbytes}});
  }
  const std::vector<float> inv_freq(4, 1.0f);
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::F32, {4}, tensor_bytes(inv_freq)});
  write_safetensors(extra + "/model.safetensors", tensors);
  const QuantizeResult r = quantize_checkpoint(tmp / "q", extra, {});
  EXPECT_EQ(r.ignored, (std::vector<std::string>{"model.layers.0.self_attn.rotary_emb.inv_freq"}));
  EXPECT_FALSE(Checkpoint(tmp / "q").has("model.layers.0.self_attn.rotary_emb.inv_freq"));
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp / "qq", tmp / "q", {}), "already a GPTQ checkpoint");
  EXPECT_FALSE(fs::exists(tmp / "qq"));
}

TEST(Quantize, RefusesANonEmptyOutputDirectory) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K-f16");
  TempDir tmp;
  fs::create_directories(tmp / "out");
  std::ofstream(tmp / "out/precious.txt") << "keep me";
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp / "out", shared_path("models/stories260K-f16"), {}), "not empty");
  EXPECT_EQ(qtest::read_file(tmp / "out/precious.txt"), "keep me");
  EXPECT_MODEL_ERROR(quantize_checkpoint(tmp / "x", shared_path("models/stories260K-f16"), {.group_size = 48}), "48");
  EXPECT_FALSE(fs::exists(tmp / "x"));
}

}  // namespace
}  // namespace chatradio::model
