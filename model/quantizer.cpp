#include "model/quantizer.h"

#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "model/errors.h"
#include "model/file_util.h"
#include "model/llama.h"
#include "model/lora.h"
#include "model/quantize_config.h"

namespace chatradio::model {
namespace {

namespace fs = std::filesystem;

// Tokenizer and generation files a serving stack expects next to the weights.
constexpr const char* kSideFiles[] = {"tokenizer.model",         "tokenizer.json",    "tokenizer_config.json",
                                      "special_tokens_map.json", "added_tokens.json", "generation_config.json"};

// Elements converted per slice when a tensor only changes dtype: bounds the
// scratch buffers (and so peak memory) to 24 MB whatever the tensor size.
constexpr int64_t kSliceElems = int64_t{1} << 22;

void write_f16(CheckpointWriter& dst, const std::string& name, std::span<const float> v) {
  std::vector<uint16_t> h(static_cast<size_t>(std::min<int64_t>(kSliceElems, static_cast<int64_t>(v.size()))));
  for (size_t i = 0; i < v.size(); i += h.size()) {
    const size_t n = std::min(h.size(), v.size() - i);
    for (size_t j = 0; j < n; ++j) h[j] = f32_to_f16(v[i + j]);
    dst.write(name, tensor_bytes(std::span<const uint16_t>(h.data(), n)));
  }
}

// Stores a source tensor as F16, slice by slice (each released once written,
// so even a 7B embedding never becomes resident as a whole): its bytes as
// they are when already F16, so an F16 model round-trips bit for bit, else
// converted.
void write_f16(CheckpointWriter& dst, const TensorView& src) {
  const int64_t n = src.numel();
  std::vector<float> f(src.dtype == DType::F16 ? 0 : static_cast<size_t>(std::min(kSliceElems, n)));  // [slice]
  for (int64_t i = 0; i < n; i += kSliceElems) {
    const TensorView part = tensor_slice(src, i, std::min(kSliceElems, n - i));
    if (src.dtype == DType::F16) {
      dst.write(src.name, {part.data, part.nbytes});
    } else {
      const std::span<float> v(f.data(), static_cast<size_t>(part.shape[0]));
      to_f32(v, src, i);  // from src, not part: an error then gives the index in the tensor
      write_f16(dst, src.name, v);
    }
    release_pages(part);
  }
}

// The tensor as float32, converted slice by slice with each source slice
// released as soon as it is read: peak is the float copy, not float + source.
std::vector<float> read_f32(const TensorView& src) {
  const int64_t n = src.numel();
  std::vector<float> w(static_cast<size_t>(n));  // [rows, cols]
  for (int64_t i = 0; i < n; i += kSliceElems) {
    const TensorView part = tensor_slice(src, i, std::min(kSliceElems, n - i));
    to_f32(std::span<float>(w.data() + i, static_cast<size_t>(part.shape[0])), src, i);
    release_pages(part);
  }
  return w;
}

}  // namespace

// ---------------------------------------------------------------------------
// Layout

std::vector<int64_t> LlamaTensor::shape() const {
  if (cols == 0) return {rows};
  return {rows, cols};
}

std::string LlamaTensor::prefix() const {
  static constexpr std::string_view kSuffix = ".weight";
  return name.substr(0, name.size() - kSuffix.size());
}

std::vector<LlamaTensor> llama_tensors(const LlamaConfig& cfg) {
  using K = LlamaTensor::Kind;
  const int d = cfg.hidden_size, kv = cfg.kv_dim(), ff = cfg.intermediate_size;
  std::vector<LlamaTensor> out;
  out.push_back({K::kEmbed, "model.embed_tokens.weight", cfg.vocab_size, d});
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({K::kNorm, p + "input_layernorm.weight", d, 0});
    out.push_back({K::kLinear, p + "self_attn.q_proj.weight", d, d});
    out.push_back({K::kLinear, p + "self_attn.k_proj.weight", kv, d});
    out.push_back({K::kLinear, p + "self_attn.v_proj.weight", kv, d});
    out.push_back({K::kLinear, p + "self_attn.o_proj.weight", d, d});
    out.push_back({K::kNorm, p + "post_attention_layernorm.weight", d, 0});
    out.push_back({K::kLinear, p + "mlp.gate_proj.weight", ff, d});
    out.push_back({K::kLinear, p + "mlp.up_proj.weight", ff, d});
    out.push_back({K::kLinear, p + "mlp.down_proj.weight", d, ff});
  }
  out.push_back({K::kNorm, "model.norm.weight", d, 0});
  if (!cfg.tie_word_embeddings) out.push_back({K::kLmHead, "lm_head.weight", cfg.vocab_size, d});
  return out;
}

std::vector<TensorSpec> gptq_specs(const std::string& prefix, const GptqShape& s) {
  return {{prefix + ".qweight", DType::I32, {s.in_padded / 8, s.out_padded}},
          {prefix + ".qzeros", DType::I32, {s.n_groups, s.out_padded / 8}},
          {prefix + ".scales", DType::F16, {s.n_groups, s.out_padded}},
          {prefix + ".g_idx", DType::I32, {s.in_padded}}};
}

std::vector<TensorSpec> checkpoint_specs(const std::vector<LlamaTensor>& tensors, bool int4, int group_size) {
  std::vector<TensorSpec> out;
  for (const LlamaTensor& t : tensors) {
    if (int4 && t.kind == LlamaTensor::Kind::kLinear) {
      for (TensorSpec& s : gptq_specs(t.prefix(), gptq_shape(t.cols, t.rows, group_size))) out.push_back(std::move(s));
    } else {
      out.push_back({t.name, DType::F16, t.shape()});
    }
  }
  return out;
}

void write_gptq(CheckpointWriter& dst, const std::string& prefix, const GptqTensors& t) {
  dst.write(prefix + ".qweight", tensor_bytes(t.qweight));
  dst.write(prefix + ".qzeros", tensor_bytes(t.qzeros));
  dst.write(prefix + ".scales", tensor_bytes(t.scales));
  dst.write(prefix + ".g_idx", tensor_bytes(t.g_idx));
}

// ---------------------------------------------------------------------------
// OutputDir

OutputDir::OutputDir(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) throw ModelError(dir + ": output path exists and is not a directory");
    if (!fs::is_empty(dir, ec) || ec)
      throw ModelError(dir + ": output directory exists and is not empty; refusing to overwrite it "
                             "(choose a new directory or empty this one)");
    return;
  }
  if (!fs::create_directories(dir, ec) || ec)
    throw ModelError(dir + ": cannot create output directory: " + (ec ? ec.message() : "unknown error"));
  created_ = true;
}

OutputDir::~OutputDir() {
  if (committed_) return;
  std::error_code ec;
  for (const std::string& f : files_) fs::remove(dir_ + "/" + f, ec);
  if (created_) fs::remove(dir_, ec);  // only succeeds when empty: never takes others' files along
}

void OutputDir::require_space(uint64_t bytes) const {
  // Side files (configs, tokenizer) and file-system overhead: a generous margin.
  constexpr uint64_t kMargin = 64ull << 20;
  struct statvfs st {};
  if (::statvfs(dir_.c_str(), &st) != 0) return;  // unknown: let the writes report ENOSPC
  const uint64_t avail = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  if (avail < bytes + kMargin) {
    char msg[160];
    std::snprintf(msg, sizeof(msg), ": not enough disk space: the checkpoint needs %.2f GB, %.2f GB are free",
                  static_cast<double>(bytes + kMargin) / 1e9, static_cast<double>(avail) / 1e9);
    throw ModelError(dir_ + msg);
  }
}

void OutputDir::adopt(const std::vector<std::string>& names) {
  files_.insert(files_.end(), names.begin(), names.end());
}

void OutputDir::write_text(const std::string& name, const std::string& text) {
  files_.push_back(name);
  write_file_atomically(dir_ + "/" + name, text);
}

void OutputDir::copy_file(const std::string& name, const std::string& from) {
  files_.push_back(name);
  std::error_code ec;
  fs::copy_file(from, dir_ + "/" + name, ec);
  if (ec) throw ModelError(from + ": cannot copy to " + dir_ + "/" + name + ": " + ec.message());
  // The copy keeps the source's mode; a read-only shared model would make
  // the output read-only too, which only gets in the way of its owner.
  fs::permissions(dir_ + "/" + name, fs::perms::owner_write, fs::perm_options::add, ec);
}

// ---------------------------------------------------------------------------
// quantize

QuantizeResult quantize_checkpoint(const std::string& out_dir, const std::string& model_dir,
                                   const QuantizeOptions& opts, const ProgressFn& progress) {
  if (is_gptq_checkpoint(model_dir))
    throw ModelError(model_dir + ": already a GPTQ checkpoint (quantize_config.json present); quantize needs a float one");
  const LlamaConfig cfg = load_llama_config(model_dir);
  const std::string config_text = read_text_file(model_dir + "/config.json");
  gptq_shape(1, 1, opts.group_size);  // rejects a bad group size before any work
  const Checkpoint ckpt(model_dir);
  const std::vector<LlamaTensor> tensors = llama_tensors(cfg);

  // Everything that can be checked up front is, so a bad input fails in
  // seconds and before a byte is written: source shapes and dtypes, and every
  // tensor of every adapter (LoraStack).
  QuantizeResult res;
  check_layer_count(cfg, ckpt);
  for (const LlamaTensor& t : tensors) {
    const TensorView& v = ckpt.get(t.name, t.shape());
    if (v.dtype != DType::F32 && v.dtype != DType::F16 && v.dtype != DType::BF16)
      throw ModelError(v.file + ": tensor '" + t.name + "': dtype " + dtype_name(v.dtype) +
                       " is not a float checkpoint weight (expected F32, F16 or BF16; is this already quantized?)");
  }
  res.ignored = check_all_tensors_used(ckpt, cfg);

  LoraStack lora(opts.lora_dirs, cfg);

  const QuantizeConfig qcfg{4, opts.group_size, opts.sym, /*desc_act=*/false, /*lm_head=*/false};
  OutputDir out(out_dir);
  CheckpointWriter writer(out.path(), checkpoint_specs(tensors, /*int4=*/true, opts.group_size),
                          opts.max_shard_bytes, {{"format", "pt"}, {"quantized_by", "chatradio quantize"}});
  out.adopt(writer.files());
  out.require_space(writer.total_bytes());

  for (const LlamaTensor& t : tensors) {
    const TensorView& src = ckpt.get(t.name);
    res.in_bytes += src.nbytes;
    const bool edit = lora.touches(t.name);
    if (t.kind == LlamaTensor::Kind::kLinear) {
      std::vector<float> w = read_f32(src);  // [rows, cols]
      if (edit) lora.apply(w, t.name);
      write_gptq(writer, t.prefix(), gptq_quantize(w.data(), t.rows, t.cols, opts.group_size, opts.sym));
      ++res.n_quantized;
    } else if (edit) {  // embedding, norm or lm_head an adapter edits: in float, then stored F16
      std::vector<float> w = read_f32(src);  // [rows, cols] or [rows]
      lora.apply(w, t.name);
      write_f16(writer, t.name, w);
      ++res.n_f16;
    } else {
      write_f16(writer, src);
      ++res.n_f16;
    }
    if (progress) progress(t.name, writer.bytes_written(), writer.total_bytes());
  }
  res.n_lora_merged = lora.finish();
  writer.finish();
  res.out_bytes = writer.total_bytes();
  res.files = writer.files();

  out.write_text("quantize_config.json", quantize_config_json(qcfg));
  res.files.push_back("quantize_config.json");
  for (const char* f : kSideFiles) {
    if (!fs::exists(model_dir + "/" + f)) continue;
    out.copy_file(f, model_dir + "/" + f);
    res.files.push_back(f);
  }
  // config.json last: until it exists the directory is not a loadable model.
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(config_text);  // validated by load_llama_config
  config["torch_dtype"] = "float16";
  config["quantization_config"] = nlohmann::ordered_json::parse(quantize_config_json(qcfg));
  out.write_text("config.json", config.dump(2) + "\n");
  res.files.push_back("config.json");
  out.commit();
  return res;
}

}  // namespace chatradio::model
