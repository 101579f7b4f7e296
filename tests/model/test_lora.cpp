// LoRA adapters on a tiny hand-made Llama shape: every kind of tensor PEFT
// saves is applied as hand-computed here, and everything else is refused with
// a message naming it (model/lora.h, docs/lora.md).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/errors.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "tests/checkpoint/helpers.h"

namespace chatradio::model {
namespace {

using testing::TempDir;

// hidden 3, one head, one layer, ffn 2, vocab 4: q_proj [3, 3], up_proj
// [2, 3], down_proj [3, 2], embed_tokens [4, 3], norms [3].
LlamaConfig tiny(bool tied) {
  LlamaConfig c;
  c.hidden_size = 3;
  c.intermediate_size = 2;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 1;
  c.num_key_value_heads = 1;
  c.vocab_size = 4;
  c.max_position_embeddings = 16;
  c.tie_word_embeddings = tied;
  return c;
}

struct T {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

constexpr const char* kQ = "base_model.model.model.layers.0.self_attn.q_proj";
constexpr const char* kEmbed = "base_model.model.model.embed_tokens";

std::string config_json(const std::string& extra = "") {
  return R"({"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj","v_proj","embed_tokens"],)"
         R"("bias":"none","fan_in_fan_out":false)" +
         (extra.empty() ? "" : "," + extra) + "}";
}

std::string write_adapter(const TempDir& tmp, const std::vector<T>& tensors, const std::string& cfg = config_json(),
                          const std::string& name = "lora") {
  const std::string dir = tmp / name;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/adapter_config.json") << cfg;
  std::vector<TensorToWrite> w;
  for (const T& t : tensors)
    w.push_back({t.name,
                 DType::F32,
                 t.shape,
                 {reinterpret_cast<const uint8_t*>(t.values.data()), t.values.size() * sizeof(float)}});
  write_safetensors(dir + "/adapter_model.safetensors", w);
  return dir;
}

// A = [[1,0,2],[0,1,-1]], B = [[1,2],[3,0],[0,1]]: B·A = [[1,2,0],[3,0,6],[0,1,-1]].
const std::vector<T> kQLora = {{std::string(kQ) + ".lora_A.weight", {2, 3}, {1, 0, 2, 0, 1, -1}},
                               {std::string(kQ) + ".lora_B.weight", {3, 2}, {1, 2, 3, 0, 0, 1}}};

TEST(Lora, LinearMergeMatchesHandComputation) {
  TempDir tmp;
  const LoraAdapter ad(write_adapter(tmp, kQLora), tiny(true));
  EXPECT_EQ(ad.config().r, 2);
  EXPECT_FLOAT_EQ(ad.config().scale(), 2.0f);
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_EQ(ad.touched_weights(), std::vector<std::string>{q});
  EXPECT_FALSE(ad.touches("model.layers.0.self_attn.v_proj.weight"));
  std::vector<float> w{1, 1, 1, 0, 0, 0, 0, 0, 0};
  EXPECT_TRUE(ad.apply(w, q));
  EXPECT_EQ(w, (std::vector<float>{3, 5, 1, 6, 0, 12, 0, 2, -2}));  // W + 2·B·A
  std::vector<float> wrong(8);
  EXPECT_MODEL_ERROR(ad.apply(wrong, q), "q_proj", "8");
}

TEST(Lora, EmbeddingLoraIsTheTransposedProductAsInPeft) {
  TempDir tmp;
  // PEFT: lora_embedding_A [r, vocab], lora_embedding_B [dim, r], delta = (B @ A).T * scaling.
  // r = 1, alpha = 2: A = [[1,2,3,4]], B = [[1],[0],[-1]]; (B·A)ᵀ = [[1,0,-1],[2,0,-2],[3,0,-3],[4,0,-4]].
  const std::string cfg = R"({"peft_type":"LORA","r":1,"lora_alpha":2,"target_modules":["embed_tokens"]})";
  const LoraAdapter ad(write_adapter(tmp,
                                     {{std::string(kEmbed) + ".lora_embedding_A", {1, 4}, {1, 2, 3, 4}},
                                      {std::string(kEmbed) + ".lora_embedding_B", {3, 1}, {1, 0, -1}}},
                                     cfg),
                       tiny(true));
  std::vector<float> e(12, 0.5f);
  EXPECT_TRUE(ad.apply(e, "model.embed_tokens.weight"));
  EXPECT_EQ(e, (std::vector<float>{2.5, 0.5, -1.5, 4.5, 0.5, -3.5, 6.5, 0.5, -5.5, 8.5, 0.5, -7.5}));

  // The unsaved names (adapter name kept) are the same tensors.
  const LoraAdapter named(write_adapter(tmp,
                                        {{std::string(kEmbed) + ".lora_embedding_A.default", {1, 4}, {1, 2, 3, 4}},
                                         {std::string(kEmbed) + ".lora_embedding_B.default", {3, 1}, {1, 0, -1}}},
                                        cfg, "named"),
                          tiny(true));
  std::vector<float> e2(12, 0.5f);
  named.apply(e2, "model.embed_tokens.weight");
  EXPECT_EQ(e2, e);

  // A stored the linear way round ([vocab, r]) is refused with the shape PEFT uses.
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp,
                                               {{std::string(kEmbed) + ".lora_embedding_A", {4, 1}, {1, 2, 3, 4}},
                                                {std::string(kEmbed) + ".lora_embedding_B", {3, 1}, {1, 0, -1}}},
                                               cfg, "transposed"),
                                 tiny(true)),
                     "lora_embedding_A", "[4, 1]", "[1, 4]");
  // lora_A/lora_B on an embedding is not PEFT's layout.
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp,
                                               {{std::string(kEmbed) + ".lora_A.weight", {1, 4}, {1, 2, 3, 4}},
                                                {std::string(kEmbed) + ".lora_B.weight", {3, 1}, {1, 0, -1}}},
                                               cfg, "linear-style"),
                                 tiny(true)),
                     "embed_tokens", "lora_embedding_A");
}

TEST(Lora, SavedModulesReplaceTheBaseTensorInEveryPeftNameForm) {
  TempDir tmp;
  const std::string cfg = R"({"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"],)"
                          R"("modules_to_save":["norm","input_layernorm","up_proj"]})";
  const LoraAdapter ad(
      write_adapter(tmp,
                    {{"base_model.model.model.norm.weight", {3}, {1, 2, 3}},  // as PEFT saves it
                     {"base_model.model.model.layers.0.input_layernorm.modules_to_save.default.weight", {3}, {4, 5, 6}},
                     {"model.layers.0.mlp.up_proj.weight", {2, 3}, {1, 2, 3, 4, 5, 6}}},  // no prefix
                    cfg),
      tiny(true));
  EXPECT_EQ(ad.touched_weights(), (std::vector<std::string>{"model.layers.0.input_layernorm.weight",
                                                            "model.layers.0.mlp.up_proj.weight", "model.norm.weight"}));
  std::vector<float> n{1, 1, 1};
  EXPECT_TRUE(ad.apply(n, "model.norm.weight"));
  EXPECT_EQ(n, (std::vector<float>{1, 2, 3}));
  EXPECT_FALSE(ad.apply(n, "model.norm.weight")) << "the same values again change nothing";
  std::vector<float> up(6);
  ad.apply(up, "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(up, (std::vector<float>{1, 2, 3, 4, 5, 6}));

  // A replacement of another shape (here a resized vocabulary) is refused with both shapes.
  EXPECT_MODEL_ERROR(
      LoraAdapter(write_adapter(tmp, {{std::string(kEmbed) + ".weight", {5, 3}, std::vector<float>(15, 1)}},
                                config_json(), "resized"),
                  tiny(true)),
      "model.embed_tokens.weight", "[5, 3]", "[4, 3]", "vocabulary");
  // Two tensors replacing one weight.
  EXPECT_MODEL_ERROR(
      LoraAdapter(write_adapter(tmp,
                                {{"base_model.model.model.norm.weight", {3}, {1, 2, 3}},
                                 {"base_model.model.model.norm.modules_to_save.default.weight", {3}, {1, 2, 3}}},
                                config_json(), "twice"),
                  tiny(true)),
      "are both", "model.norm");
}

TEST(Lora, SavedBaseLayerIsAppliedBeforeItsLora) {
  TempDir tmp;
  // What PEFT saves for an embedding LoRA: the base embedding, then the pair.
  const std::string cfg = R"({"peft_type":"LORA","r":1,"lora_alpha":1,"target_modules":["embed_tokens"]})";
  const LoraAdapter ad(write_adapter(tmp,
                                     {{std::string(kEmbed) + ".base_layer.weight", {4, 3}, std::vector<float>(12, 1)},
                                      {std::string(kEmbed) + ".lora_embedding_A", {1, 4}, {1, 0, 0, 0}},
                                      {std::string(kEmbed) + ".lora_embedding_B", {3, 1}, {1, 1, 1}}},
                                     cfg),
                       tiny(false));
  std::vector<float> e(12, 7.0f);
  ad.apply(e, "model.embed_tokens.weight");
  EXPECT_EQ(e, (std::vector<float>{2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1}));
  // A base layer with no LoRA next to it is not something PEFT writes.
  EXPECT_MODEL_ERROR(
      LoraAdapter(write_adapter(tmp, {{std::string(kEmbed) + ".base_layer.weight", {4, 3}, std::vector<float>(12, 1)}},
                                cfg, "alone"),
                  tiny(false)),
      "base_layer.weight", "no LoRA");
}

TEST(Lora, TiedEmbeddingsLmHeadFollowsTheEmbeddingOrIsRefused) {
  TempDir tmp;
  const std::string cfg = R"({"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj","lm_head"]})";
  const std::vector<float> e(12, 0.25f), other(12, 0.5f);
  // The same tensor saved as both ends of a tied embedding: applied once, to the embedding.
  const LoraAdapter both(
      write_adapter(tmp, {{std::string(kEmbed) + ".weight", {4, 3}, e}, {"base_model.model.lm_head.weight", {4, 3}, e}},
                    cfg, "both"),
      tiny(true));
  EXPECT_EQ(both.touched_weights(), std::vector<std::string>{"model.embed_tokens.weight"});
  // lm_head alone, or a different one, cannot be stored in a tied checkpoint.
  EXPECT_MODEL_ERROR(
      LoraAdapter(write_adapter(tmp, {{"base_model.model.lm_head.weight", {4, 3}, e}}, cfg, "head"), tiny(true)),
      "lm_head", "tied");
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp,
                                               {{std::string(kEmbed) + ".weight", {4, 3}, e},
                                                {"base_model.model.lm_head.weight", {4, 3}, other}},
                                               cfg, "differ"),
                                 tiny(true)),
                     "lm_head", "tied", "same tensor");
  // A LoRA on a tied lm_head would change the input embedding too.
  const std::vector<T> head_lora = {{"base_model.model.lm_head.lora_A.weight", {2, 3}, {1, 0, 0, 0, 1, 0}},
                                    {"base_model.model.lm_head.lora_B.weight", {4, 2}, {1, 0, 0, 1, 1, 0, 0, 1}}};
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp, head_lora, cfg, "head-lora"), tiny(true)), "lm_head.lora_A",
                     "tied");
  // Untied, lm_head is a linear like any other: W + s·B·A.
  const LoraAdapter untied(write_adapter(tmp, head_lora, cfg, "untied"), tiny(false));
  std::vector<float> h(12, 0.0f);
  untied.apply(h, "lm_head.weight");
  EXPECT_EQ(h, (std::vector<float>{2, 0, 0, 0, 2, 0, 2, 0, 0, 0, 2, 0}));
}

TEST(Lora, EveryTensorNotUnderstoodIsRefusedByName) {
  TempDir tmp;
  int i = 0;
  for (const std::string& name :
       {std::string(kQ) + ".lora_magnitude_vector", std::string(kQ) + ".lora_B.bias", std::string(kQ) + ".lora_A",
        std::string(kEmbed) + ".token_adapter.trainable_tokens_delta", std::string("prompt_embeddings"),
        std::string(kQ) + ".lora_magnitude_vector.weight"}) {
    std::vector<T> tensors = kQLora;
    tensors.push_back({name, {3}, {1, 2, 3}});
    EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp, tensors, config_json(), "x" + std::to_string(i++)), tiny(true)),
                       "'" + name + "'");
  }
  // A pair for a layer the model does not have.
  EXPECT_MODEL_ERROR(
      LoraAdapter(
          write_adapter(
              tmp,
              {{"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", {2, 3}, std::vector<float>(6, 1)},
               {"base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight", {3, 2}, std::vector<float>(6, 1)}},
              config_json(), "layer7"),
          tiny(true)),
      "model.layers.7.self_attn.q_proj.weight", "lacks");
  // Half a pair, and the same half twice under two adapter names.
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp, {kQLora[0]}, config_json(), "half"), tiny(true)), "only one of",
                     "q_proj");
  std::vector<T> twice = kQLora;
  twice.push_back({std::string(kQ) + ".lora_A.other.weight", {2, 3}, kQLora[0].values});
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp, twice, config_json(), "twice"), tiny(true)), "lora_A.other.weight",
                     "both");
}

TEST(Lora, TargetModulesMustNameModulesTheModelHasAndCoverEveryPair) {
  TempDir tmp;
  auto with = [&](const std::string& extra, const std::string& name) {
    return write_adapter(tmp, kQLora, R"({"peft_type":"LORA","r":2,"lora_alpha":4,"bias":"none",)" + extra + "}", name);
  };
  EXPECT_MODEL_ERROR(LoraAdapter(with(R"("target_modules":["q_proj","wq","query_key_value"])", "a"), tiny(true)),
                     "target_modules", "'wq', 'query_key_value'");
  EXPECT_MODEL_ERROR(LoraAdapter(with(R"("target_modules":["q_proj","input_layernorm"])", "b"), tiny(true)),
                     "'input_layernorm'");
  EXPECT_MODEL_ERROR(LoraAdapter(with(R"("target_modules":".*\\.wq")", "c"), tiny(true)), ".*\\.wq",
                     "matches no module");
  EXPECT_MODEL_ERROR(LoraAdapter(with(R"("target_modules":["v_proj"])", "d"), tiny(true)), "q_proj.lora_A",
                     "target_modules does not select");
  EXPECT_MODEL_ERROR(LoraAdapter(with(R"("target_modules":["q_proj"],"exclude_modules":["q_proj"])", "e"), tiny(true)),
                     "exclude_modules");
  EXPECT_MODEL_ERROR(LoraAdapter(with(R"("target_modules":["q_proj"],"layers_to_transform":[3])", "f"), tiny(true)),
                     "layer 0", "layers_to_transform");
  EXPECT_MODEL_ERROR(LoraAdapter(with(R"("target_modules":["q_proj"],"modules_to_save":["score"])", "g"), tiny(true)),
                     "modules_to_save", "'score'");
  // The forms PEFT accepts: full paths, a regular expression, all-linear, a layer list.
  int i = 0;
  for (const std::string ok : {R"("target_modules":["model.layers.0.self_attn.q_proj"])",
                               R"("target_modules":"model\\.layers\\.\\d+\\.self_attn\\.(q|v)_proj")",
                               R"("target_modules":"all-linear","layers_to_transform":0)"})
    EXPECT_NO_THROW(LoraAdapter(with(ok, "ok" + std::to_string(i++)), tiny(true))) << ok;
}

TEST(Lora, AnAdapterThatWouldChangeNothingIsAnError) {
  TempDir tmp;
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp, {}, config_json(), "empty"), tiny(true)), "no LoRA weights",
                     "change nothing");
  std::vector<T> untrained = kQLora;
  untrained[1].values.assign(6, 0.0f);  // PEFT's initial lora_B
  EXPECT_MODEL_ERROR(LoraAdapter(write_adapter(tmp, untrained, config_json(), "untrained"), tiny(true)), "all zeros");
  // A saved module equal to the weight it replaces is only found while
  // applying: the stack reports it once every weight went through.
  LoraStack same({write_adapter(tmp, {{"base_model.model.model.norm.weight", {3}, {1, 1, 1}}}, config_json(), "same")},
                 tiny(true));
  std::vector<float> n{1, 1, 1};
  same.apply(n, "model.norm.weight");
  EXPECT_MODEL_ERROR(same.finish(), "same", "changes no weight");
}

TEST(Lora, APickledAdapterIsNamedAsSuch) {
  TempDir tmp;
  const std::string dir = tmp / "pickled";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/adapter_config.json") << config_json();
  std::ofstream(dir + "/adapter_model.bin") << "PK";
  EXPECT_MODEL_ERROR(LoraAdapter(dir, tiny(true)), "adapter_model.bin", "safetensors");
}

TEST(Lora, StackAppliesAdaptersInOrder) {
  TempDir tmp;
  const std::string norm = "model.norm.weight", q = "model.layers.0.self_attn.q_proj.weight";
  const std::string a = write_adapter(tmp, kQLora, config_json(), "a");
  const std::string b =
      write_adapter(tmp,
                    {{"base_model.model.model.norm.weight", {3}, {1, 2, 3}},
                     {"base_model.model.model.layers.0.self_attn.q_proj.weight", {3, 3}, std::vector<float>(9, 1)}},
                    config_json(), "b");
  // b after a: b's saved q_proj wins. a after b: a's delta lands on b's q_proj.
  LoraStack ab({a, b}, tiny(true)), ba({b, a}, tiny(true));
  std::vector<float> w1(9, 0.0f), w2(9, 0.0f), n1(3, 0.0f), n2(3, 0.0f);
  ab.apply(w1, q);
  ab.apply(n1, norm);
  ba.apply(w2, q);
  ba.apply(n2, norm);
  EXPECT_EQ(w1, std::vector<float>(9, 1));
  EXPECT_EQ(w2, (std::vector<float>{3, 5, 1, 7, 1, 13, 1, 3, -1}));
  EXPECT_EQ(n1, n2);
  EXPECT_EQ(ab.finish(), 2);
  EXPECT_EQ(ba.finish(), 2);
}

TEST(Lora, UnsupportedVariantsAreRejectedByName) {
  for (const char* field :
       {R"("use_dora":true)", R"("fan_in_fan_out":true)", R"("use_rslora":true)", R"("bias":"all")",
        R"("peft_type":"IA3")", R"("lora_bias":true)", R"("rank_pattern":{"q_proj":8})", R"("alpha_pattern":{"q":1})",
        R"("init_lora_weights":"pissa_niter_4")", R"("init_lora_weights":"olora")", R"("init_lora_weights":"loftq")",
        R"("trainable_token_indices":[5,6])", R"("layer_replication":[[0,1]])", R"("target_parameters":["x"])",
        R"("alora_invocation_tokens":[5])", R"("use_qalora":true)", R"j("target_modules":"(?P<x>q)")j",
        R"("target_modules":7)"}) {
    const std::string cfg = std::string(R"({"r":2,"lora_alpha":4,)") + field + "}";
    const std::string key = std::string(field).substr(1, std::string(field).find('"', 1) - 1);
    EXPECT_MODEL_ERROR(parse_lora_config(cfg, "adapter_config.json"), "'" + key + "'");
  }
  for (const char* ok : {R"("init_lora_weights":true)", R"("init_lora_weights":"gaussian")", R"("use_dora":false)",
                         R"("rank_pattern":{})", R"("trainable_token_indices":null)"})
    EXPECT_NO_THROW(parse_lora_config(std::string(R"({"r":2,"lora_alpha":4,)") + ok + "}", "x")) << ok;
  EXPECT_THROW(parse_lora_config(R"({"r":0,"lora_alpha":4})", "x"), ModelError);
  EXPECT_THROW(parse_lora_config(R"({"lora_alpha":4})", "x"), ModelError);
}

}  // namespace
}  // namespace chatradio::model
