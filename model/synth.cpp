#include "model/synth.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "model/errors.h"
#include "model/gptq.h"
#include "model/sampler.h"

namespace chatradio::model {
namespace {

// Elements generated per slice for float tensors: bounds scratch memory.
constexpr size_t kSliceElems = size_t{1} << 22;

// Weight std of a trained Llama's linears and embedding.
constexpr float kWeightStd = 0.02f;
// Int4: q is Binomial(15, 1/2) (mean 7.5, variance 3.75) and the zero is 7 or
// 8, so E[(q - zero)^2] = 3.75 + 0.25 = 4; a mean scale of 0.01 then gives
// dequantized weights an RMS of 0.02.
constexpr float kInt4Scale = kWeightStd / 2.0f;

struct NamedShape {
  const char* name;
  int hidden, inter, layers, heads, kv_heads, vocab, ctx;
  bool tied;
};

// The real models these shapes copy (their Hugging Face config.json files).
constexpr NamedShape kShapes[] = {
    {"llama2-7b", 4096, 11008, 32, 32, 32, 32000, 4096, false},
    {"llama2-13b", 5120, 13824, 40, 40, 40, 32000, 4096, false},
    {"tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000, 2048, false},
    {"stories260k", 64, 172, 5, 8, 4, 512, 512, true},
};

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// One generator per tensor: its bytes depend on (seed, name) alone.
Rng tensor_rng(uint64_t seed, const std::string& name) { return Rng(seed * 0x9e3779b97f4a7c15ull ^ fnv1a(name)); }

// F16 samples of approximately N(mean, std^2): the sum of four 16-bit
// uniforms (Irwin-Hall), which is bell-shaped, bounded at ±3.5 std and costs
// one generator step. The sum, quantized to 16 bits, indexes a table of the
// f16 results, so a sample needs no float math or f16 rounding: synth is
// bound by the disk, not by conversions.
class NormalF16 {
 public:
  NormalF16(float mean, float std) : table_(65536) {
    for (size_t i = 0; i < table_.size(); ++i) {
      // Bucket i holds sums 4i..4i+3 of (b + 0.5) terms: the midpoint's sum
      // is 4i + 1.5 + 2; the sum of 4 U(0,1) has mean 2 and variance 1/3.
      const float z = (static_cast<float>(4 * i) + 3.5f) / 65536.0f - 2.0f;
      table_[i] = f32_to_f16(mean + std * 1.7320508f * z);
    }
  }
  uint16_t operator()(Rng& rng) const {
    const uint64_t x = rng.next();
    return table_[((x & 0xffff) + (x >> 16 & 0xffff) + (x >> 32 & 0xffff) + (x >> 48)) >> 2];
  }

 private:
  std::vector<uint16_t> table_;  // [65536] f16
};

void write_random_f16(CheckpointWriter& dst, const LlamaTensor& t, float mean, float std, Rng& rng) {
  const NormalF16 normal(mean, std);
  const size_t n = static_cast<size_t>(t.rows) * static_cast<size_t>(std::max(t.cols, 1));
  std::vector<uint16_t> h(std::min(kSliceElems, n));  // [slice]
  for (size_t i = 0; i < n; i += h.size()) {
    const size_t m = std::min(h.size(), n - i);
    for (size_t j = 0; j < m; ++j) h[j] = normal(rng);
    dst.write(t.name, tensor_bytes(std::span<const uint16_t>(h.data(), m)));
  }
}

// Four Binomial(15, 1/2) draws from one 64-bit word: the popcounts of its
// four 16-bit lanes with the top bit cleared, computed in parallel (SWAR;
// std::popcount is a library call per count without -mpopcnt). Returned as
// nibbles 0..3 of a 16-bit value.
uint32_t four_binomial15(uint64_t x) {
  x &= 0x7fff7fff7fff7fffull;
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  x = (x + (x >> 8)) & 0x001f001f001f001full;  // lane k (bits 16k..) = its count, <= 15
  return static_cast<uint32_t>((x & 0xf) | (x >> 12 & 0xf0) | (x >> 24 & 0xf00) | (x >> 36 & 0xf000));
}

// GPTQ tensors of a random W[out, in], generated directly: q is
// Binomial(15, 1/2), bell-shaped like trained weights. Padding inputs and
// outputs get q = zero, so they dequantize to exactly 0 as gptq.h requires.
GptqTensors random_gptq(int out, int in, int group_size, Rng& rng) {
  GptqTensors t;
  t.shape = gptq_shape(in, out, group_size);
  const GptqShape& s = t.shape;
  const int op = s.out_padded;
  std::vector<uint8_t> zero(static_cast<size_t>(s.n_groups) * op);  // [n_groups, out_p] 7 or 8
  std::vector<uint32_t> qzeros(static_cast<size_t>(s.n_groups) * (op / 8), 0);  // [n_groups, out_p/8]
  t.scales.resize(static_cast<size_t>(s.n_groups) * op);                      // [n_groups, out_p]
  for (int g = 0; g < s.n_groups; ++g) {
    for (int o = 0; o < op; ++o) {
      const uint64_t u = rng.next();
      const size_t at = static_cast<size_t>(g) * op + o;
      zero[at] = static_cast<uint8_t>(7 + (u & 1));
      // Scales vary ±25% between groups and outputs, as real ones do.
      const float jitter = 0.75f + 0.5f * static_cast<float>(u >> 40) / static_cast<float>(1 << 24);
      t.scales[at] = f32_to_f16(kInt4Scale * jitter);
      qzeros[static_cast<size_t>(g) * (op / 8) + o / 8] |= static_cast<uint32_t>(zero[at] - 1) << (4 * (o % 8));
    }
  }
  t.qweight.resize(static_cast<size_t>(s.in_padded / 8) * op);  // [in_p/8, out_p]
  for (int r = 0; r < s.in_padded / 8; ++r) {
    const int g = 8 * r / s.group;  // a group is a multiple of 32 inputs: one word never spans two
    for (int o = 0; o < op; ++o) {
      uint32_t word = four_binomial15(rng.next()) | four_binomial15(rng.next()) << 16;
      if (o >= out || 8 * r + 7 >= in) {
        const uint32_t z = zero[static_cast<size_t>(g) * op + o];
        for (int j = 0; j < 8; ++j) {
          if (o < out && 8 * r + j < in) continue;
          word = (word & ~(15u << (4 * j))) | z << (4 * j);
        }
      }
      t.qweight[static_cast<size_t>(r) * op + o] = static_cast<int32_t>(word);
    }
  }
  t.qzeros.assign(qzeros.begin(), qzeros.end());
  t.g_idx.resize(s.in_padded);  // [in_p]
  for (int i = 0; i < s.in_padded; ++i) t.g_idx[i] = i / s.group;
  return t;
}

// A float as JSON shows it in HF configs (1e-05, not 9.999999747378752e-06).
double json_float(float f) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.7g", static_cast<double>(f));
  return std::strtod(buf, nullptr);
}

std::string known_shapes() {
  std::string s;
  for (const std::string& n : synth_shape_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

std::optional<LlamaConfig> synth_shape(const std::string& name) {
  for (const NamedShape& s : kShapes) {
    if (name != s.name) continue;
    LlamaConfig c;
    c.hidden_size = s.hidden;
    c.intermediate_size = s.inter;
    c.num_hidden_layers = s.layers;
    c.num_attention_heads = s.heads;
    c.num_key_value_heads = s.kv_heads;
    c.vocab_size = s.vocab;
    c.max_position_embeddings = s.ctx;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_word_embeddings = s.tied;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    return c;
  }
  return std::nullopt;
}

std::vector<std::string> synth_shape_names() {
  std::vector<std::string> out;
  for (const NamedShape& s : kShapes) out.push_back(s.name);
  return out;
}

std::string llama_config_json(const LlamaConfig& cfg, const std::optional<QuantizeConfig>& quant) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = cfg.hidden_size;
  j["intermediate_size"] = cfg.intermediate_size;
  j["num_hidden_layers"] = cfg.num_hidden_layers;
  j["num_attention_heads"] = cfg.num_attention_heads;
  j["num_key_value_heads"] = cfg.num_key_value_heads;
  j["vocab_size"] = cfg.vocab_size;
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["rms_norm_eps"] = json_float(cfg.rms_norm_eps);
  j["rope_theta"] = json_float(cfg.rope_theta);
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["bos_token_id"] = cfg.bos_token_id;
  j["eos_token_id"] = cfg.eos_token_id;
  j["torch_dtype"] = "float16";
  if (quant) j["quantization_config"] = nlohmann::ordered_json::parse(quantize_config_json(*quant));
  return j.dump(2) + "\n";
}

SynthResult synth_checkpoint(const std::string& out_dir, const SynthOptions& opts, const ProgressFn& progress) {
  const std::optional<LlamaConfig> cfg = synth_shape(opts.shape);
  if (!cfg) throw ModelError("unknown shape '" + opts.shape + "' (known: " + known_shapes() + ")");
  const bool int4 = opts.format == SynthFormat::kInt4;
  if (int4) gptq_shape(1, 1, opts.group_size);  // rejects a bad group size before any work
  if (!opts.tokenizer.empty() && !std::filesystem::is_regular_file(opts.tokenizer))
    throw ModelError(opts.tokenizer + ": tokenizer file not found");
  const std::vector<LlamaTensor> tensors = llama_tensors(*cfg);

  OutputDir out(out_dir);
  CheckpointWriter writer(out.path(), checkpoint_specs(tensors, int4, opts.group_size), opts.max_shard_bytes,
                          {{"format", "pt"},
                           {"chatradio_synth", opts.shape + " seed " + std::to_string(opts.seed) +
                                                   " (random weights, not a trained model)"}});
  out.adopt(writer.files());
  out.require_space(writer.total_bytes());

  for (const LlamaTensor& t : tensors) {
    Rng rng = tensor_rng(opts.seed, t.name);
    switch (t.kind) {
      case LlamaTensor::Kind::kNorm:
        write_random_f16(writer, t, 1.0f, kWeightStd, rng);
        break;
      case LlamaTensor::Kind::kLinear:
        if (int4) {
          write_gptq(writer, t.prefix(), random_gptq(t.rows, t.cols, opts.group_size, rng));
          break;
        }
        [[fallthrough]];
      case LlamaTensor::Kind::kEmbed:
      case LlamaTensor::Kind::kLmHead:
        write_random_f16(writer, t, 0.0f, kWeightStd, rng);
        break;
    }
    if (progress) progress(t.name, writer.bytes_written(), writer.total_bytes());
  }
  writer.finish();

  SynthResult res;
  res.out_bytes = writer.total_bytes();
  res.files = writer.files();
  std::optional<QuantizeConfig> quant;
  if (int4) {
    quant = QuantizeConfig{4, opts.group_size, /*sym=*/false, /*desc_act=*/false, /*lm_head=*/false};
    out.write_text("quantize_config.json", quantize_config_json(*quant));
    res.files.push_back("quantize_config.json");
  }
  if (!opts.tokenizer.empty()) {
    out.copy_file("tokenizer.model", opts.tokenizer);
    res.files.push_back("tokenizer.model");
  }
  // config.json last: until it exists the directory is not a loadable model.
  out.write_text("config.json", llama_config_json(*cfg, quant));
  res.files.push_back("config.json");
  out.commit();
  return res;
}

}  // namespace chatradio::model
