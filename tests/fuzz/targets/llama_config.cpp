// config.json: parse_llama_config on arbitrary text. What it accepts must
// round-trip: written back by llama_config_json and parsed again, it gives
// the same config (a mismatch traps). Any exception other than ModelError
// counts as a crash.
//
// fuzz-seeds: ../shared/models/*/config.json
// fuzz-seed-text: {"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32000,"max_position_embeddings":4096,"rms_norm_eps":1e-05,"rope_theta":10000.0,"tie_word_embeddings":false,"bos_token_id":1,"eos_token_id":2,"hidden_act":"silu","model_type":"llama","rope_scaling":null,"torch_dtype":"float16"}
// fuzz-seed-text: {"hidden_size":64,"intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,"num_key_value_heads":4,"vocab_size":512,"max_position_embeddings":512,"eos_token_id":[2,3],"quantization_config":{"bits":4,"group_size":128}}
#include <cstdint>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/errors.h"
#include "model/synth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  chatradio::model::LlamaConfig c;
  try {
    c = chatradio::model::parse_llama_config(text, "config.json");
  } catch (const chatradio::model::ModelError&) {
    return 0;
  }
  (void)c.head_dim();
  (void)c.kv_dim();
  const chatradio::model::LlamaConfig r =
      chatradio::model::parse_llama_config(chatradio::model::llama_config_json(c, std::nullopt), "round-trip");
  const bool same = r.hidden_size == c.hidden_size && r.intermediate_size == c.intermediate_size &&
                    r.num_hidden_layers == c.num_hidden_layers && r.num_attention_heads == c.num_attention_heads &&
                    r.num_key_value_heads == c.num_key_value_heads && r.vocab_size == c.vocab_size &&
                    r.max_position_embeddings == c.max_position_embeddings && r.rms_norm_eps == c.rms_norm_eps &&
                    r.rope_theta == c.rope_theta && r.tie_word_embeddings == c.tie_word_embeddings &&
                    r.bos_token_id == c.bos_token_id && r.eos_token_id == c.eos_token_id;
  if (!same) __builtin_trap();
  return 0;
}
