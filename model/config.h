// LlamaConfig: the architecture hyper-parameters, read from a Hugging Face
// config.json. Anything the forward pass would silently get wrong (rope
// scaling, attention bias, another architecture or activation) is rejected.
#pragma once

#include <cstdint>
#include <string>

namespace chatradio::model {

struct LlamaConfig {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // defaults to num_attention_heads when absent
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  int32_t bos_token_id = 1;
  int32_t eos_token_id = 2;

  int head_dim() const { return hidden_size / num_attention_heads; }
  int kv_dim() const { return head_dim() * num_key_value_heads; }
};

// Parses config.json text; `source` names the file in error messages.
// Throws ModelError naming the offending field.
LlamaConfig parse_llama_config(const std::string& json_text, const std::string& source);

// Reads DIR/config.json.
LlamaConfig load_llama_config(const std::string& model_dir);

}  // namespace chatradio::model
