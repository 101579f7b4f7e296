// Safetensors checkpoints, memory-mapped: one file or a sharded set listed by
// model.safetensors.index.json. Every claim a file makes is validated before
// any tensor byte is touched (header length, JSON, dtype, shape x dtype = byte
// range, ranges inside the file, covering its data section exactly: no
// overlap, hole or trailing bytes), so a truncated or hostile file yields a
// ModelError naming file and tensor, never a bad read.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace chatradio::model {

enum class DType { F32, F16, BF16, I32, I64, I8, U8 };

const char* dtype_name(DType t);
size_t dtype_size(DType t);
// "[a, b, c]", for error messages.
std::string shape_str(const std::vector<int64_t>& shape);

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
  // The JSON header as stored (validated), a view into the mapping.
  std::string_view header() const { return header_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string_view header_;
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
  // The safetensors files it maps, in the order opened.
  std::vector<const SafetensorsFile*> files() const;
  // The tensor, or nullptr when absent, without counting as a read: for
  // prefetching pages ahead of the get() that consumes the tensor.
  const TensorView* find(const std::string& name) const;
  // Names get() has never returned, sorted. A loader that fetched every
  // tensor it needs through get() learns from this which tensors the model
  // does not use (safe to call from threads: reads are recorded atomically).
  std::vector<std::string> unread() const;

 private:
  struct Entry {
    const TensorView* view;
    mutable std::atomic<bool> read{false};
  };
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> index_;
};

// Drops the resident pages of a tensor's mapping once it has been consumed.
// Checkpoint tensors are views into MAP_PRIVATE read-only file mappings: pages
// we touched stay in our resident set until unmapped, so a 7B model read front
// to back would end up all resident next to its repacked copy. Safe because
// nothing writes to the mapping (a later access maps the page-cache page
// again); purely advisory, so a failure only costs memory.
void release_pages(const TensorView& t);
// Starts reading a tensor's pages from disk in the background
// (MADV_WILLNEED), so a cold load's I/O overlaps the work on the tensors
// before it. Advisory, like release_pages.
void prefetch_pages(const TensorView& t);
// Maps all of a tensor's pages in one call, waiting for any disk reads
// (MADV_POPULATE_READ), instead of a page fault per 64 KB as they are first
// touched. Advisory: where the kernel lacks it, the faults happen as before.
void populate_pages(const TensorView& t);

// Elements [begin, begin + n) of a tensor, as a flat view (shape [n]); for
// working on, or releasing, a large tensor a piece at a time.
TensorView tensor_slice(const TensorView& t, int64_t begin, int64_t n);

// Converts a F32/F16/BF16 tensor to float32 into dst[t.numel()] (float_convert.cpp).
// Throws ModelError for other dtypes, and for a NaN or Inf element, naming the
// tensor and the element's index: no non-finite weight enters a model.
void to_f32(std::span<float> dst, const TensorView& t);
// Same for elements [offset, offset + dst.size()) of the tensor (a slice of
// rows, so a large tensor can be converted a piece at a time); an error gives
// the element's index in the whole tensor.
void to_f32(std::span<float> dst, const TensorView& t, int64_t offset);
// The same non-finite check for a float tensor used without conversion (f16
// tables read straight from the mapping, GPTQ scales). Throws ModelError.
void check_finite(const TensorView& t);
// Same for elements [offset, offset + n) (a slice, so a large table can be
// checked in parallel pieces); an error gives the index in the whole tensor.
void check_finite(const TensorView& t, int64_t offset, int64_t n);

// IEEE half and bfloat16 conversions (round-to-nearest-even on the way down).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

// ---------------------------------------------------------------------------
// Writing. The header lists every tensor up front, so a writer only needs the
// names, dtypes and shapes before the first byte; data then streams through
// in header order, and peak memory is whatever the caller holds at a time
// (one tensor, or a slice of one). Files are written to PATH.tmp and renamed
// when complete, so a crash or an error never leaves a truncated checkpoint
// under the real name.

struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

// Bytes of a tensor: numel x dtype size. Throws ModelError naming `file` and
// the tensor for a negative dimension or an overflowing shape.
uint64_t tensor_nbytes(const TensorSpec& t, const std::string& file);

class SafetensorsWriter {
 public:
  // Validates the specs (unique names, not "__metadata__", sane shapes),
  // creates PATH.tmp and writes the header. Throws ModelError.
  // data_alignment (a multiple of 8) pads the header so the data section
  // starts at that offset multiple.
  SafetensorsWriter(const std::string& path, std::vector<TensorSpec> tensors,
                    const std::map<std::string, std::string>& metadata = {}, size_t data_alignment = 8);
  // Without finish(), removes PATH.tmp: nothing is left behind.
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends bytes of tensor `name`: the whole tensor, or its next slice.
  // Tensors come in header order (a zero-byte tensor needs no call). Writing
  // past a tensor's size, out of order, after a failure or to a name the
  // header lacks throws ModelError naming the file and the tensor.
  void write(const std::string& name, std::span<const uint8_t> bytes);
  // Checks every tensor is complete, flushes to disk and renames PATH.tmp to
  // PATH. durable = false skips the flush (fsync): for a file whose damage
  // its reader detects and recovers from (model/weight_cache.h), the write
  // then costs page-cache time, not disk time.
  void finish(bool durable = true);

  const std::string& path() const { return path_; }
  uint64_t data_bytes() const { return total_; }  // data section size
  uint64_t bytes_written() const { return written_; }  // of the data section

 private:
  std::string path_, tmp_;
  std::vector<TensorSpec> specs_;
  std::vector<uint64_t> sizes_;        // [n tensors] bytes
  std::map<std::string, size_t> pos_;  // name -> index in specs_
  size_t current_ = 0;                 // tensor being written
  uint64_t done_ = 0;                  // bytes of it written so far
  uint64_t total_ = 0, written_ = 0;
  int fd_ = -1;
  bool failed_ = false, finished_ = false;

  void write_all(const void* data, size_t n, const std::string& tensor);
  void close_fd();
};

// A checkpoint directory written tensor by tensor: DIR/model.safetensors
// when everything fits in max_shard_bytes of data, otherwise shards
// model-0000i-of-0000n.safetensors of at most that much each (a tensor larger
// than the limit gets a shard of its own) plus model.safetensors.index.json,
// as transformers writes them; model::Checkpoint reads both.
class CheckpointWriter {
 public:
  static constexpr uint64_t kDefaultMaxShardBytes = 2'000'000'000;

  // DIR must exist. Throws ModelError for bad specs or when a file cannot be created.
  CheckpointWriter(const std::string& dir, std::vector<TensorSpec> tensors,
                   uint64_t max_shard_bytes = kDefaultMaxShardBytes,
                   const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  // Without finish(), removes every file it wrote.
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // As SafetensorsWriter::write, across shards.
  void write(const std::string& name, std::span<const uint8_t> bytes);
  // Completes the last shard and writes the index (when sharded).
  void finish();

  uint64_t total_bytes() const { return total_; }
  uint64_t bytes_written() const;
  // File names (inside DIR) this writer produces, shards first.
  std::vector<std::string> files() const;

 private:
  struct Shard {
    std::string file;               // name inside dir_
    std::vector<TensorSpec> specs;  // its tensors, in order
  };
  std::string dir_;
  std::map<std::string, std::string> metadata_;
  std::vector<Shard> shards_;
  std::map<std::string, size_t> shard_of_;  // tensor name -> shard index
  std::unique_ptr<SafetensorsWriter> open_;  // shard being written
  size_t open_index_ = 0;
  uint64_t total_ = 0, done_in_closed_ = 0;
  std::vector<std::string> written_;  // completed files, removed unless finished
  bool finished_ = false;
};

// Writes `text` to PATH.tmp, flushes it to disk and renames it to PATH (JSON
// side files of a checkpoint: the shard index, configs). Throws ModelError.
void write_file_atomically(const std::string& path, std::string_view text);

// Writes a single-file safetensors checkpoint from tensors in memory (tests
// that craft files; a thin wrapper over SafetensorsWriter). Tensors are
// written in the order given.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;
};
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace chatradio::model
