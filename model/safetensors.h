// Safetensors checkpoints, memory-mapped: one file or a sharded set listed by
// model.safetensors.index.json. Every claim a file makes is validated before
// any tensor byte is touched (header length, JSON, dtype, shape x dtype = byte
// range, ranges inside the file and non-overlapping), so a truncated or
// hostile file yields a ModelError naming file and tensor, never a bad read.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace chatradio::model {

enum class DType { F32, F16, BF16, I32, I64, I8, U8 };

const char* dtype_name(DType t);
size_t dtype_size(DType t);

// A view of one tensor inside a mapped file; valid while its SafetensorsFile lives.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // [nbytes]
  size_t nbytes = 0;
  std::string file;  // path of the file holding it, for error messages

  int64_t numel() const;
};

// One mmapped .safetensors file.
class SafetensorsFile {
 public:
  // Throws ModelError on any I/O or validation failure.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory (model.safetensors, or the shards an
// index names; a tensor the index names must be in the shard it says).
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& model_dir);

  bool has(const std::string& name) const;
  // Throws ModelError "<dir>: missing tensor <name>" when absent.
  const TensorView& get(const std::string& name) const;
  // get() plus a shape check; the error names tensor, expected and actual shape.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// Converts a F32/F16/BF16 tensor to float32 into dst[t.numel()].
// Throws ModelError for other dtypes.
void to_f32(std::span<float> dst, const TensorView& t);

// IEEE half and bfloat16 conversions (round-to-nearest-even on the way down).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

// Writes a single-file safetensors checkpoint (used by the quantizer, synth and
// tests that craft files). Tensors are written in the order given.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;
};
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace chatradio::model
