// Safetensors reading (mmap), checkpoint assembly, float conversions, writing.
//
// Format (https://github.com/huggingface/safetensors): u64 little-endian N,
// then N bytes of JSON header {name: {dtype, shape, data_offsets: [b, e]},
// "__metadata__": {str: str}}, then the data section; offsets are relative to
// the start of the data section. Everything the header claims is checked
// against the file before any TensorView is handed out, so later code may read
// view.data[0, nbytes) without further checks.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "model/errors.h"
#include "model/file_util.h"
#include "model/json_util.h"

namespace chatradio::model {
namespace {

using nlohmann::json;

// The reference implementation caps the header at 100 MB too; a larger value
// is a corrupt or hostile length, and parsing it would just burn memory.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

std::string errno_text() { return std::strerror(errno); }

bool parse_dtype(const std::string& s, DType* out) {
  static constexpr struct {
    const char* name;
    DType t;
  } kTable[] = {{"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I32", DType::I32},
                {"I64", DType::I64}, {"I8", DType::I8},   {"U8", DType::U8}};
  for (const auto& e : kTable)
    if (s == e.name) {
      *out = e.t;
      return true;
    }
  return false;
}

// A JSON integer >= 0 as uint64; false for floats, negatives, other types.
bool non_negative_integer(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

// Shard names come from a file we do not trust; only a plain name inside the
// checkpoint directory is acceptable (no "../x", "/etc/x", "a/b").
bool plain_file_name(const std::string& s) {
  if (s.empty() || s == "." || s == "..") return false;
  return s.find('/') == std::string::npos && s.find('\\') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

bool is_file(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

}  // namespace

// ---------------------------------------------------------------------------
// dtypes

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::I8: case DType::U8: return 1;
  }
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t TensorView::numel() const {
  // Validated at load time to fit (numel * dtype_size <= file size).
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ModelError(path + ": cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string e = errno_text();
    ::close(fd);
    throw ModelError(path + ": cannot stat: " + e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw ModelError(path + ": not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw ModelError(path + ": file is " + std::to_string(file_size) +
                     " bytes, too short for a safetensors header (needs at least 8)");
  }
  // MAP_PRIVATE + PROT_READ: we never write, and a private mapping means no
  // write through it could ever reach the checkpoint on disk.
  void* m = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int mmap_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) throw ModelError(path + ": mmap failed: " + std::strerror(mmap_errno));
  map_ = m;
  map_size_ = file_size;

  // The constructor body may throw after mmap; the destructor would not run.
  try {
    const uint8_t* base = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian on any host
    if (header_len > kMaxHeaderBytes)
      throw ModelError(path + ": header length " + std::to_string(header_len) + " exceeds the " +
                       std::to_string(kMaxHeaderBytes) + "-byte limit (corrupt file?)");
    if (header_len > file_size - 8)
      throw ModelError(path + ": header length " + std::to_string(header_len) + " exceeds the file size " +
                       std::to_string(file_size) + " - 8 (truncated file?)");

    const char* hbegin = reinterpret_cast<const char*>(base + 8);
    header_ = std::string_view(hbegin, header_len);
    std::string duplicate;
    json header = parse_json_strict(hbegin, hbegin + header_len, path, &duplicate);
    if (!header.is_object())
      throw ModelError(path + ": header must be a JSON object, got " + std::string(header.type_name()));
    if (!duplicate.empty())
      throw ModelError(path + ": key '" + duplicate + "' appears twice in the header");

    const uint8_t* data = base + 8 + header_len;
    const uint64_t data_size = file_size - 8 - header_len;

    struct Range {
      uint64_t begin, end;
      const std::string* name;
    };
    std::vector<Range> ranges;

    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const json& entry = it.value();
      if (name == "__metadata__") {
        if (entry.is_null()) continue;
        if (!entry.is_object())
          throw ModelError(path + ": __metadata__ must be an object of strings, got " +
                           std::string(entry.type_name()));
        for (auto m2 = entry.begin(); m2 != entry.end(); ++m2) {
          if (!m2.value().is_string())
            throw ModelError(path + ": __metadata__ key '" + m2.key() + "' must be a string, got " +
                             std::string(m2.value().type_name()));
          metadata_[m2.key()] = m2.value().get<std::string>();
        }
        continue;
      }
      auto bad = [&](const std::string& what) { return ModelError(path + ": tensor '" + name + "': " + what); };
      if (!entry.is_object()) throw bad("entry must be an object, got " + std::string(entry.type_name()));

      TensorView v;
      v.name = name;
      v.file = path;

      auto dt = entry.find("dtype");
      if (dt == entry.end()) throw bad("missing 'dtype'");
      if (!dt->is_string()) throw bad("'dtype' must be a string");
      if (!parse_dtype(dt->get<std::string>(), &v.dtype))
        throw bad("unsupported dtype '" + dt->get<std::string>() + "' (supported: F32 F16 BF16 I32 I64 I8 U8)");

      auto sh = entry.find("shape");
      if (sh == entry.end()) throw bad("missing 'shape'");
      if (!sh->is_array()) throw bad("'shape' must be an array");
      // numel * dtype_size is computed overflow-safely; the final byte count
      // must equal the data range, which is bounded by the file size.
      uint64_t nbytes = dtype_size(v.dtype);
      for (const json& d : *sh) {
        uint64_t dim = 0;
        if (!non_negative_integer(d, &dim)) throw bad("shape " + sh->dump() + " must hold non-negative integers");
        if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          throw bad("shape " + sh->dump() + " dimension too large");
        if (__builtin_mul_overflow(nbytes, dim, &nbytes)) throw bad("shape " + sh->dump() + " overflows");
        v.shape.push_back(static_cast<int64_t>(dim));
      }

      auto off = entry.find("data_offsets");
      if (off == entry.end()) throw bad("missing 'data_offsets'");
      uint64_t b = 0, e = 0;
      if (!off->is_array() || off->size() != 2 || !non_negative_integer((*off)[0], &b) ||
          !non_negative_integer((*off)[1], &e))
        throw bad("'data_offsets' must be [begin, end] of non-negative integers, got " + off->dump());
      const std::string offs = "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "]";
      if (b > e) throw bad(offs + ": begin is after end");
      if (e > data_size)
        throw bad(offs + " extend past the end of the data section (" + std::to_string(data_size) +
                  " bytes; truncated file?)");
      if (e - b != nbytes)
        throw bad(offs + " span " + std::to_string(e - b) + " bytes but shape " + shape_str(v.shape) + " of " +
                  dtype_name(v.dtype) + " needs " + std::to_string(nbytes));

      v.data = data + b;
      v.nbytes = static_cast<size_t>(nbytes);
      auto [slot, inserted] = tensors_.emplace(name, std::move(v));
      if (!inserted) throw bad("listed twice");  // unreachable: duplicates caught above
      if (e > b) ranges.push_back({b, e, &slot->first});
    }

    // The tensors must tile the data section exactly, as the reference
    // implementation demands: two tensors sharing bytes would alias each
    // other's weights, and bytes no tensor claims (a hole, a tail) mean the
    // header and the data disagree, i.e. a corrupt or tampered file.
    // Zero-byte tensors claim nothing and may sit anywhere.
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return x.begin < y.begin; });
    auto span = [](const Range& r) { return "[" + std::to_string(r.begin) + ", " + std::to_string(r.end) + "]"; };
    uint64_t covered = 0;  // data bytes [0, covered) belong to the tensors seen so far
    for (size_t i = 0; i < ranges.size(); ++i) {
      const Range& r = ranges[i];
      if (r.begin < covered)
        throw ModelError(path + ": tensor '" + *r.name + "': data_offsets " + span(r) + " overlap tensor '" +
                         *ranges[i - 1].name + "' " + span(ranges[i - 1]));
      if (r.begin > covered)
        throw ModelError(path + ": data bytes [" + std::to_string(covered) + ", " + std::to_string(r.begin) +
                         ") " + (i ? "between tensor '" + *ranges[i - 1].name + "' and " : "before ") + "tensor '" +
                         *r.name + "' belong to no tensor (a hole; the tensors must cover the data section exactly)");
      covered = r.end;
    }
    if (covered != data_size)
      throw ModelError(path + ": " + std::to_string(data_size - covered) + " trailing bytes after the last tensor" +
                       (ranges.empty() ? "" : " ('" + *ranges.back().name + "' ends at " + std::to_string(covered) +
                                                  ")") +
                       "; the data section holds " + std::to_string(data_size) +
                       " bytes and the tensors must cover it exactly");
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

// ---------------------------------------------------------------------------
// Checkpoint

Checkpoint::Checkpoint(const std::string& model_dir) : dir_(model_dir) {
  const std::string single = model_dir + "/model.safetensors";
  const std::string index_path = model_dir + "/model.safetensors.index.json";

  // Like transformers, a single-file checkpoint wins over an index.
  if (is_file(single)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& [name, view] : files_.back()->tensors()) index_[name].view = &view;
    return;
  }
  if (!is_file(index_path))
    throw ModelError(model_dir + ": no checkpoint found (expected model.safetensors or model.safetensors.index.json)");

  const std::string text = read_text_file(index_path, "cannot open", /*with_errno=*/true);
  std::string duplicate;
  json index = parse_json_strict(text.data(), text.data() + text.size(), index_path, &duplicate);
  if (!index.is_object()) throw ModelError(index_path + ": expected a JSON object");
  if (!duplicate.empty()) throw ModelError(index_path + ": key '" + duplicate + "' appears twice");
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object())
    throw ModelError(index_path + ": missing 'weight_map' object (tensor name -> shard file)");
  if (wm->empty()) throw ModelError(index_path + ": 'weight_map' is empty");

  // Open each shard once, in first-mention order.
  std::map<std::string, const SafetensorsFile*> shards;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    const std::string& tensor = it.key();
    if (!it.value().is_string())
      throw ModelError(index_path + ": tensor '" + tensor + "': shard must be a string, got " +
                       std::string(it.value().type_name()));
    const std::string shard = it.value().get<std::string>();
    if (!plain_file_name(shard))
      throw ModelError(index_path + ": tensor '" + tensor + "': shard '" + shard +
                       "' must be a plain file name inside the checkpoint directory");
    if (shards.count(shard)) continue;
    try {
      files_.push_back(std::make_unique<SafetensorsFile>(model_dir + "/" + shard));
    } catch (const ModelError& e) {
      throw ModelError(index_path + ": shard '" + shard + "' (for tensor '" + tensor + "'): " + e.what());
    }
    shards[shard] = files_.back().get();
  }

  // Every tensor of every shard is loaded (as transformers does); a name in
  // two shards is ambiguous.
  for (const auto& f : files_) {
    for (const auto& [name, view] : f->tensors()) {
      auto [it, inserted] = index_.try_emplace(name);
      if (!inserted)
        throw ModelError(model_dir + ": tensor '" + name + "' is present in two shards: " + it->second.view->file +
                         " and " + view.file);
      it->second.view = &view;
    }
  }
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    const std::string shard = it.value().get<std::string>();
    if (!shards.at(shard)->tensors().count(it.key()))
      throw ModelError(index_path + ": tensor '" + it.key() + "' is mapped to shard '" + shard +
                       "' but that file does not contain it");
  }
}

std::vector<const SafetensorsFile*> Checkpoint::files() const {
  std::vector<const SafetensorsFile*> out;
  for (const auto& f : files_) out.push_back(f.get());
  return out;
}

bool Checkpoint::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorView& Checkpoint::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw ModelError(dir_ + ": missing tensor " + name);
  it->second.read.store(true, std::memory_order_relaxed);
  return *it->second.view;
}

const TensorView& Checkpoint::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView& v = get(name);
  if (v.shape != shape)
    throw ModelError(v.file + ": tensor '" + name + "': expected shape " + shape_str(shape) + ", got " +
                     shape_str(v.shape));
  return v;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& kv : index_) out.push_back(kv.first);
  return out;
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.view;
}

std::vector<std::string> Checkpoint::unread() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : index_)
    if (!e.read.load(std::memory_order_relaxed)) out.push_back(name);
  return out;
}

// ---------------------------------------------------------------------------
// Writing

namespace {

// Writes n bytes at data to fd, retrying short writes and EINTR; returns
// false with errno set on failure.
bool write_fd(int fd, const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    // Linux transfers at most ~2 GiB per call; larger slices just loop.
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// fsync then rename: without the fsync a power cut right after the rename
// may leave an empty file under the final name on some file systems.
void sync_close_rename(int fd, const std::string& tmp, const std::string& path, bool durable = true) {
  const bool synced = !durable || ::fsync(fd) == 0 || errno == EINVAL;  // EINVAL: file system without fsync
  const std::string sync_error = synced ? "" : errno_text();
  const bool closed = ::close(fd) == 0;
  if (!synced || !closed) {
    const std::string e = synced ? errno_text() : sync_error;
    std::remove(tmp.c_str());
    throw ModelError(tmp + ": write failed: " + e);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string e = errno_text();
    std::remove(tmp.c_str());
    throw ModelError(path + ": cannot rename from " + tmp + ": " + e);
  }
}

int create_tmp(const std::string& tmp) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw ModelError(tmp + ": cannot create: " + errno_text());
  return fd;
}

}  // namespace

uint64_t tensor_nbytes(const TensorSpec& t, const std::string& file) {
  uint64_t nbytes = dtype_size(t.dtype);
  for (int64_t d : t.shape) {
    if (d < 0) throw ModelError(file + ": tensor '" + t.name + "': negative dimension in shape " + shape_str(t.shape));
    if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes))
      throw ModelError(file + ": tensor '" + t.name + "': shape " + shape_str(t.shape) + " overflows");
  }
  return nbytes;
}

void write_file_atomically(const std::string& path, std::string_view text) {
  const std::string tmp = path + ".tmp";
  const int fd = create_tmp(tmp);
  if (!write_fd(fd, text.data(), text.size())) {
    const std::string e = errno_text();
    ::close(fd);
    std::remove(tmp.c_str());
    throw ModelError(tmp + ": write failed: " + e);
  }
  sync_close_rename(fd, tmp, path);
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<TensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata, size_t data_alignment)
    : path_(path), tmp_(path + ".tmp"), specs_(std::move(tensors)) {
  // ordered_json keeps insertion order, so the header lists tensors in the
  // order given and the data offsets increase monotonically with it.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  for (size_t i = 0; i < specs_.size(); ++i) {
    const TensorSpec& t = specs_[i];
    if (t.name == "__metadata__") throw ModelError(path + ": tensor '" + t.name + "': reserved name");
    if (!pos_.emplace(t.name, i).second) throw ModelError(path + ": tensor '" + t.name + "': given twice");
    const uint64_t nbytes = tensor_nbytes(t, path);
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {total_, total_ + nbytes}}};
    sizes_.push_back(nbytes);
    total_ += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::type_error& e) {  // e.g. a name that is not valid UTF-8
    throw ModelError(path + ": cannot encode header: " + e.what());
  }
  // Pad with spaces (valid JSON whitespace) so the data section starts
  // aligned (8 bytes, as the reference writer does, or more when asked);
  // readers then may use aligned loads.
  if (data_alignment == 0 || data_alignment % 8 != 0) {
    throw ModelError(path + ": data alignment " + std::to_string(data_alignment) + " is not a multiple of 8");
  }
  text.append((data_alignment - (8 + text.size()) % data_alignment) % data_alignment, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  fd_ = create_tmp(tmp_);
  try {
    write_all(len, 8, "header");
    write_all(text.data(), text.size(), "header");
  } catch (...) {
    close_fd();
    std::remove(tmp_.c_str());
    throw;
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  if (finished_) return;
  close_fd();
  std::remove(tmp_.c_str());
}

void SafetensorsWriter::close_fd() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void SafetensorsWriter::write_all(const void* data, size_t n, const std::string& tensor) {
  if (!write_fd(fd_, data, n)) {
    failed_ = true;
    throw ModelError(tmp_ + ": writing " + tensor + ": " + errno_text());
  }
}

void SafetensorsWriter::write(const std::string& name, std::span<const uint8_t> bytes) {
  auto bad = [&](const std::string& what) { return ModelError(path_ + ": tensor '" + name + "': " + what); };
  if (finished_) throw bad("written after the file was finished");
  if (failed_) throw bad("written after an earlier write failed");
  auto it = pos_.find(name);
  if (it == pos_.end()) throw bad("not in the header");
  if (it->second < current_) throw bad("already written");
  // Move on to `name`; everything before it must be complete.
  while (current_ < it->second) {
    if (done_ != sizes_[current_]) {
      throw bad("written out of order: '" + specs_[current_].name + "' comes first and has " +
                std::to_string(done_) + " of its " + std::to_string(sizes_[current_]) + " bytes");
    }
    ++current_;
    done_ = 0;
  }
  if (bytes.size() > sizes_[current_] - done_) {
    throw bad("got " + std::to_string(bytes.size()) + " bytes but only " + std::to_string(sizes_[current_] - done_) +
              " of its " + std::to_string(sizes_[current_]) + " remain (shape " + shape_str(specs_[current_].shape) +
              " of " + dtype_name(specs_[current_].dtype) + ")");
  }
  write_all(bytes.data(), bytes.size(), "tensor '" + name + "'");
  done_ += bytes.size();
  written_ += bytes.size();
}

void SafetensorsWriter::finish(bool durable) {
  if (finished_) return;
  if (failed_) throw ModelError(path_ + ": cannot finish after a failed write");
  for (; current_ < specs_.size(); ++current_, done_ = 0) {
    if (done_ != sizes_[current_]) {
      throw ModelError(path_ + ": tensor '" + specs_[current_].name + "': incomplete, " + std::to_string(done_) +
                       " of " + std::to_string(sizes_[current_]) + " bytes written");
    }
  }
  const int fd = fd_;
  fd_ = -1;
  finished_ = true;  // sync_close_rename removes the tmp file itself on failure
  sync_close_rename(fd, tmp_, path_, durable);
}

CheckpointWriter::CheckpointWriter(const std::string& dir, std::vector<TensorSpec> tensors, uint64_t max_shard_bytes,
                                   const std::map<std::string, std::string>& metadata)
    : dir_(dir), metadata_(metadata) {
  if (max_shard_bytes == 0) throw ModelError(dir + ": shard size limit must be positive");
  // Greedy packing in order: shards stay contiguous ranges of the tensor list,
  // which is what lets them be written one after the other.
  uint64_t in_shard = 0;
  for (TensorSpec& t : tensors) {
    const uint64_t n = tensor_nbytes(t, dir);
    if (shards_.empty() || (in_shard > 0 && in_shard + n > max_shard_bytes)) {
      shards_.emplace_back();
      in_shard = 0;
    }
    if (!shard_of_.emplace(t.name, shards_.size() - 1).second)
      throw ModelError(dir + ": tensor '" + t.name + "': given twice");
    in_shard += n;
    total_ += n;
    shards_.back().specs.push_back(std::move(t));
  }
  if (shards_.empty()) shards_.emplace_back();
  const size_t n = shards_.size();
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, n);
    shards_[i].file = n == 1 ? "model.safetensors" : name;
  }
  open_ = std::make_unique<SafetensorsWriter>(dir_ + "/" + shards_[0].file, shards_[0].specs, metadata_);
}

CheckpointWriter::~CheckpointWriter() {
  if (finished_) return;
  open_.reset();
  for (const std::string& f : written_) std::remove((dir_ + "/" + f).c_str());
}

uint64_t CheckpointWriter::bytes_written() const {
  return done_in_closed_ + (open_ ? open_->bytes_written() : 0);
}

std::vector<std::string> CheckpointWriter::files() const {
  std::vector<std::string> out;
  for (const Shard& s : shards_) out.push_back(s.file);
  if (shards_.size() > 1) out.push_back("model.safetensors.index.json");
  return out;
}

void CheckpointWriter::write(const std::string& name, std::span<const uint8_t> bytes) {
  if (finished_) throw ModelError(dir_ + ": tensor '" + name + "': written after the checkpoint was finished");
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw ModelError(dir_ + ": tensor '" + name + "': not in the checkpoint's tensor list");
  if (it->second < open_index_) throw ModelError(dir_ + ": tensor '" + name + "': already written");
  while (open_index_ < it->second) {
    open_->finish();  // throws, naming the tensor, if the shard is incomplete
    done_in_closed_ += open_->bytes_written();
    written_.push_back(shards_[open_index_].file);
    open_.reset();
    ++open_index_;
    open_ = std::make_unique<SafetensorsWriter>(dir_ + "/" + shards_[open_index_].file, shards_[open_index_].specs,
                                                metadata_);
  }
  open_->write(name, bytes);
}

void CheckpointWriter::finish() {
  if (finished_) return;
  for (;;) {
    open_->finish();
    done_in_closed_ += open_->bytes_written();
    written_.push_back(shards_[open_index_].file);
    open_.reset();
    if (++open_index_ == shards_.size()) break;
    // Only reachable when the remaining shards are incomplete (finish() then
    // names the first missing tensor) or hold zero-byte tensors alone.
    open_ = std::make_unique<SafetensorsWriter>(dir_ + "/" + shards_[open_index_].file, shards_[open_index_].specs,
                                                metadata_);
  }
  if (shards_.size() > 1) {
    json map = json::object();  // std::map-backed: sorted names, as transformers writes them
    for (const Shard& s : shards_)
      for (const TensorSpec& t : s.specs) map[t.name] = s.file;
    json index = {{"metadata", {{"total_size", total_}}}, {"weight_map", std::move(map)}};
    write_file_atomically(dir_ + "/model.safetensors.index.json", index.dump(2) + "\n");
    written_.push_back("model.safetensors.index.json");
  }
  finished_ = true;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Sizes are checked before anything is created, so bad input leaves no file.
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) {
    specs.push_back({t.name, t.dtype, t.shape});
    const uint64_t nbytes = tensor_nbytes(specs.back(), path);
    if (nbytes != t.bytes.size())
      throw ModelError(path + ": tensor '" + t.name + "': shape " + shape_str(t.shape) + " of " + dtype_name(t.dtype) +
                       " needs " + std::to_string(nbytes) + " bytes, got " + std::to_string(t.bytes.size()));
  }
  SafetensorsWriter w(path, std::move(specs), metadata);
  for (const TensorToWrite& t : tensors) w.write(t.name, t.bytes);
  w.finish();
}

namespace {

// madvise over the whole pages a tensor's bytes touch; failures are ignored
// (every caller's advice is only an optimisation).
void advise_pages(const TensorView& t, int advice) {
  if (t.nbytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes + page - 1) & ~(page - 1);
  ::madvise(reinterpret_cast<void*>(begin), end - begin, advice);
}

}  // namespace

void release_pages(const TensorView& t) { advise_pages(t, MADV_DONTNEED); }

void prefetch_pages(const TensorView& t) { advise_pages(t, MADV_WILLNEED); }

void populate_pages(const TensorView& t) {
#ifdef MADV_POPULATE_READ  // Linux 5.14
  advise_pages(t, MADV_POPULATE_READ);
#else
  (void)t;
#endif
}

TensorView tensor_slice(const TensorView& t, int64_t begin, int64_t n) {
  TensorView s = t;
  const size_t elem = dtype_size(t.dtype);
  s.shape = {n};
  s.data = t.data + static_cast<size_t>(begin) * elem;
  s.nbytes = static_cast<size_t>(n) * elem;
  return s;
}

}  // namespace chatradio::model
