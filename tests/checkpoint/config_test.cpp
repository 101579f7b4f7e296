// parse_llama_config / load_llama_config: defaults, real configs, and every
// rejection naming the file and the field.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "helpers.h"
#include "model/config.h"
#include "model/errors.h"

namespace chatradio::model {
namespace {

using chatradio::testing::TempDir;

constexpr const char* kSource = "/models/x/config.json";

using Fields = std::vector<std::pair<std::string, std::string>>;  // key -> raw JSON value

// A config with the five required fields, then `extra` (which may override a
// required one), minus `drop`.
std::string config(const Fields& extra = {}, const std::string& drop = "") {
  Fields f = {{"hidden_size", "64"}, {"intermediate_size", "172"}, {"num_hidden_layers", "5"},
              {"num_attention_heads", "8"}, {"vocab_size", "512"}};
  for (const auto& [k, v] : extra) {
    bool replaced = false;
    for (auto& kv : f)
      if (kv.first == k) kv.second = v, replaced = true;
    if (!replaced) f.emplace_back(k, v);
  }
  std::string s = "{";
  for (const auto& [k, v] : f) {
    if (k == drop) continue;
    if (s.size() > 1) s += ", ";
    s += "\"" + k + "\": " + v;
  }
  return s + "}";
}

LlamaConfig parse(const std::string& text) { return parse_llama_config(text, kSource); }

TEST(Config, DefaultsForOptionalFields) {
  LlamaConfig c = parse(config());
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.head_dim(), 8);
}

TEST(Config, NullMeansAbsent) {
  LlamaConfig c = parse(config({{"num_key_value_heads", "null"}, {"rope_scaling", "null"}, {"head_dim", "null"}}));
  EXPECT_EQ(c.num_key_value_heads, 8);
}

// The config.json of meta-llama/Llama-2-7b-hf as published.
TEST(Config, RealLlama2_7B) {
  const std::string text = R"({
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";
  LlamaConfig c = parse(text);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.head_dim(), 128);
}

TEST(Config, HarmlessAndUnknownFieldsAreIgnored) {
  LlamaConfig c = parse(config({{"torch_dtype", "\"bfloat16\""},
                                {"transformers_version", "\"4.40.0\""},
                                {"use_cache", "false"},
                                {"initializer_range", "0.02"},
                                {"pad_token_id", "0"},
                                {"attention_dropout", "0.0"},
                                {"pretraining_tp", "1"},
                                {"attention_bias", "false"},
                                {"mlp_bias", "false"},
                                {"head_dim", "8"},
                                {"hidden_act", "\"silu\""},
                                {"some_future_field", "{\"a\": [1, 2]}"}}));
  EXPECT_EQ(c.hidden_size, 64);
}

TEST(Config, ExplicitValues) {
  LlamaConfig c = parse(config({{"num_key_value_heads", "4"}, {"max_position_embeddings", "512"},
                                {"rms_norm_eps", "1e-05"}, {"rope_theta", "500000.0"},
                                {"tie_word_embeddings", "true"}, {"bos_token_id", "3"}, {"eos_token_id", "4"}}));
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.kv_dim(), 32);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 3);
  EXPECT_EQ(c.eos_token_id, 4);
  EXPECT_FLOAT_EQ(parse(config({{"rope_theta", "10000"}})).rope_theta, 10000.0f);  // integer is a number too
}

TEST(Config, EosListTakesFirst) {
  EXPECT_EQ(parse(config({{"eos_token_id", "[7, 2, 9]"}})).eos_token_id, 7);
  EXPECT_MODEL_ERROR(parse(config({{"eos_token_id", "[]"}})), kSource, "eos_token_id");
  EXPECT_MODEL_ERROR(parse(config({{"eos_token_id", "[2, \"x\"]"}})), kSource, "eos_token_id");
}

struct Rejected {
  std::string key, value, field;  // field: what the message must name
};

TEST(Config, RejectsMathChangingFields) {
  const std::vector<Rejected> cases = {
      {"architectures", "[\"MistralForCausalLM\"]", "architectures"},
      {"architectures", "[\"LlamaForCausalLM\", \"Foo\"]", "architectures"},
      {"architectures", "[]", "architectures"},
      {"model_type", "\"mistral\"", "model_type"},
      {"rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}", "rope_scaling"},
      {"attention_bias", "true", "attention_bias"},
      {"mlp_bias", "true", "mlp_bias"},
      {"hidden_act", "\"gelu\"", "hidden_act"},
      {"head_dim", "16", "head_dim"},
      {"num_key_value_heads", "3", "num_key_value_heads"},
      {"num_key_value_heads", "16", "num_key_value_heads"},
      {"num_attention_heads", "7", "num_attention_heads"},     // 64 % 7 != 0
      {"num_attention_heads", "64", "num_attention_heads"},    // head_dim 1: odd, RoPE needs pairs
      {"pretraining_tp", "2", "pretraining_tp"},
      {"bos_token_id", "512", "bos_token_id"},                 // outside the vocabulary
      {"eos_token_id", "-1", "eos_token_id"},
  };
  for (const Rejected& r : cases) {
    SCOPED_TRACE(r.key + " = " + r.value);
    EXPECT_MODEL_ERROR(parse(config({{r.key, r.value}})), kSource, r.field);
  }
}

TEST(Config, RejectsNonPositiveSizes) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "vocab_size", "num_key_value_heads", "max_position_embeddings"}) {
    for (const char* v : {"0", "-8"}) {
      SCOPED_TRACE(std::string(field) + " = " + v);
      EXPECT_MODEL_ERROR(parse(config({{field, v}})), kSource, field);
    }
  }
  EXPECT_MODEL_ERROR(parse(config({{"hidden_size", "4294967360"}})), kSource, "hidden_size");  // > INT_MAX
  EXPECT_MODEL_ERROR(parse(config({{"rms_norm_eps", "0"}})), kSource, "rms_norm_eps");
  EXPECT_MODEL_ERROR(parse(config({{"rope_theta", "-1.0"}})), kSource, "rope_theta");
  EXPECT_MODEL_ERROR(parse(config({{"rope_theta", "1e300"}})), kSource, "rope_theta");  // not a float
  // Default token ids outside a tiny vocabulary (found by fuzz_llama_config).
  EXPECT_MODEL_ERROR(parse(config({{"vocab_size", "2"}})), kSource, "eos_token_id");
  EXPECT_MODEL_ERROR(parse(config({{"vocab_size", "1"}, {"eos_token_id", "0"}})), kSource, "bos_token_id");
  EXPECT_EQ(parse(config({{"vocab_size", "2"}, {"eos_token_id", "0"}})).vocab_size, 2);
}

TEST(Config, RejectsWrongTypes) {
  const std::vector<Rejected> cases = {
      {"hidden_size", "\"64\"", "hidden_size"},
      {"hidden_size", "64.0", "hidden_size"},
      {"vocab_size", "[512]", "vocab_size"},
      {"num_key_value_heads", "4.5", "num_key_value_heads"},
      {"rms_norm_eps", "\"1e-5\"", "rms_norm_eps"},
      {"rope_theta", "true", "rope_theta"},
      {"tie_word_embeddings", "\"true\"", "tie_word_embeddings"},
      {"tie_word_embeddings", "1", "tie_word_embeddings"},
      {"attention_bias", "\"no\"", "attention_bias"},
      {"architectures", "\"LlamaForCausalLM\"", "architectures"},
      {"architectures", "[1]", "architectures"},
      {"model_type", "7", "model_type"},
      {"hidden_act", "[\"silu\"]", "hidden_act"},
      {"bos_token_id", "1.0", "bos_token_id"},
      {"head_dim", "\"8\"", "head_dim"},
      {"pretraining_tp", "1.5", "pretraining_tp"},
  };
  for (const Rejected& r : cases) {
    SCOPED_TRACE(r.key + " = " + r.value);
    EXPECT_MODEL_ERROR(parse(config({{r.key, r.value}})), kSource, r.field);
  }
}

TEST(Config, RejectsMissingRequiredField) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "vocab_size"}) {
    SCOPED_TRACE(field);
    EXPECT_MODEL_ERROR(parse(config({}, field)), kSource, field, "missing");
    EXPECT_MODEL_ERROR(parse(config({{field, "null"}})), kSource, field, "missing");
  }
}

TEST(Config, RejectsInvalidJson) {
  // The parser's position (line and column) helps find the typo.
  EXPECT_MODEL_ERROR(parse("{\n  \"hidden_size\": 64,\n  \"vocab_size\" 512\n}"), kSource, "invalid JSON", "line 3");
  EXPECT_MODEL_ERROR(parse(""), kSource, "invalid JSON");
  EXPECT_MODEL_ERROR(parse(config() + " trailing"), kSource, "invalid JSON");
  EXPECT_MODEL_ERROR(parse("[1, 2]"), kSource, "object");
  EXPECT_MODEL_ERROR(parse(config() + std::string("\0{", 2)), kSource, "invalid JSON", "NUL");
  EXPECT_MODEL_ERROR(parse("{\"hidden_size\": 64, \"hidden_size\": 128}"), kSource, "hidden_size", "twice");
}

TEST(Config, LoadFromDirectory) {
  TempDir dir;
  chatradio::testing::write_file(dir / "config.json", config({{"num_key_value_heads", "2"}}));
  EXPECT_EQ(load_llama_config(dir.path()).num_key_value_heads, 2);
  chatradio::testing::write_file(dir / "config.json", config({{"hidden_act", "\"relu\""}}));
  EXPECT_MODEL_ERROR(load_llama_config(dir.path()), dir / "config.json", "hidden_act");
  TempDir empty;
  EXPECT_MODEL_ERROR(load_llama_config(empty.path()), empty / "config.json");
}

}  // namespace
}  // namespace chatradio::model
