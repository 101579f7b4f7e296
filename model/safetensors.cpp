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
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "model/errors.h"

namespace chatradio::model {
namespace {

using nlohmann::json;

// The reference implementation caps the header at 100 MB too; a larger value
// is a corrupt or hostile length, and parsing it would just burn memory.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

std::string errno_text() { return std::strerror(errno); }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

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

// Parses JSON text and reports the first duplicated object key (nlohmann
// would otherwise keep the last one silently; two entries for one tensor name
// would make the file mean different things to different readers).
json parse_json(const char* begin, const char* end, const std::string& path, std::string* duplicate) {
  // nlohmann stops at a NUL byte as if the input ended there, which would let
  // "{...}\0<anything>" pass; the reference parser rejects it, so do we.
  if (const void* nul = std::memchr(begin, '\0', static_cast<size_t>(end - begin)))
    throw ModelError(path + ": invalid JSON: NUL byte at offset " +
                     std::to_string(static_cast<const char*>(nul) - begin));
  std::vector<std::set<std::string>> open_objects;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (ev == json::parse_event_t::key && !open_objects.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(k).second && duplicate->empty()) *duplicate = k;
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb);
  } catch (const json::parse_error& e) {
    throw ModelError(path + ": invalid JSON: " + e.what());
  }
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

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError(path + ": cannot open: " + errno_text());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw ModelError(path + ": read error");
  return ss.str();
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
    std::string duplicate;
    json header = parse_json(hbegin, hbegin + header_len, path, &duplicate);
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

    // Two tensors sharing bytes would alias each other's weights; the
    // reference writer never does that, so it indicates a corrupt header.
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return x.begin < y.begin; });
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].begin < ranges[i - 1].end)
        throw ModelError(path + ": tensor '" + *ranges[i].name + "': data_offsets [" +
                         std::to_string(ranges[i].begin) + ", " + std::to_string(ranges[i].end) +
                         "] overlap tensor '" + *ranges[i - 1].name + "' [" + std::to_string(ranges[i - 1].begin) +
                         ", " + std::to_string(ranges[i - 1].end) + "]");
    }
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
    for (const auto& [name, view] : files_.back()->tensors()) index_[name] = &view;
    return;
  }
  if (!is_file(index_path))
    throw ModelError(model_dir + ": no checkpoint found (expected model.safetensors or model.safetensors.index.json)");

  const std::string text = read_text_file(index_path);
  std::string duplicate;
  json index = parse_json(text.data(), text.data() + text.size(), index_path, &duplicate);
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
      auto [it, inserted] = index_.emplace(name, &view);
      if (!inserted)
        throw ModelError(model_dir + ": tensor '" + name + "' is present in two shards: " + it->second->file +
                         " and " + view.file);
    }
  }
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    const std::string shard = it.value().get<std::string>();
    if (!shards.at(shard)->tensors().count(it.key()))
      throw ModelError(index_path + ": tensor '" + it.key() + "' is mapped to shard '" + shard +
                       "' but that file does not contain it");
  }
}

bool Checkpoint::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorView& Checkpoint::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw ModelError(dir_ + ": missing tensor " + name);
  return *it->second;
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

// ---------------------------------------------------------------------------
// Conversions

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: renormalise so the leading 1 becomes the implicit bit.
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    if (ax == 0x7f800000u) return sign | 0x7c00u;
    // NaN: keep the top payload bits and force the quiet bit so the payload
    // truncation can never turn it into infinity.
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  // 65520 is the midpoint between the largest half (65504) and 2^16; ties go
  // to even, and 65504's mantissa is odd, so 65520 already rounds to inf.
  if (ax >= 0x477ff000u) return sign | 0x7c00u;
  if (ax >= 0x38800000u) {  // >= 2^-14: normal half
    uint32_t h = ((ax >> 23) - 127 + 15) << 10 | ((ax >> 13) & 0x3ffu);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half (units of 2^-24), or zero.
  const uint32_t e = ax >> 23;
  // Below 2^-25 (half the smallest subnormal) everything rounds to zero;
  // 2^-25 itself (e == 102) is a tie and the rounding below sends it to 0 too.
  if (e < 102) return sign;
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // value / 2^-24 = m * 2^(e - 126)
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // may become 0x400, the smallest normal: correct
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN stays NaN
  // Round to nearest even; overflow past the largest bf16 correctly yields inf.
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

void to_f32(std::span<float> dst, const TensorView& t) {
  const int64_t n = t.numel();
  if (static_cast<int64_t>(dst.size()) != n)
    throw ModelError(t.file + ": tensor '" + t.name + "': destination holds " + std::to_string(dst.size()) +
                     " floats, tensor has " + std::to_string(n));
  // Tensor data need not be aligned (the header length decides where the data
  // section starts), so elements are read with memcpy, never by casting.
  switch (t.dtype) {
    case DType::F32:
      if (n) std::memcpy(dst.data(), t.data, static_cast<size_t>(n) * 4);
      return;
    case DType::F16:
    case DType::BF16: {
      const bool half = t.dtype == DType::F16;
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        if constexpr (std::endian::native == std::endian::big) h = static_cast<uint16_t>((h >> 8) | (h << 8));
        dst[static_cast<size_t>(i)] = half ? f16_to_f32(h) : bf16_to_f32(h);
      }
      return;
    }
    default:
      throw ModelError(t.file + ": tensor '" + t.name + "': dtype " + dtype_name(t.dtype) +
                       " cannot be converted to float32 (expected F32, F16 or BF16)");
  }
}

// ---------------------------------------------------------------------------
// Writing

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps insertion order, so the header lists tensors in the
  // order given and the data offsets increase monotonically with it.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    auto bad = [&](const std::string& what) { return ModelError(path + ": tensor '" + t.name + "': " + what); };
    if (t.name == "__metadata__") throw bad("reserved name");
    if (header.contains(t.name)) throw bad("given twice");
    uint64_t nbytes = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) throw bad("negative dimension in shape " + shape_str(t.shape));
      if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes)) throw bad("shape overflows");
    }
    if (nbytes != t.bytes.size())
      throw bad("shape " + shape_str(t.shape) + " of " + dtype_name(t.dtype) + " needs " + std::to_string(nbytes) +
                " bytes, got " + std::to_string(t.bytes.size()));
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::type_error& e) {  // e.g. a name that is not valid UTF-8
    throw ModelError(path + ": cannot encode header: " + e.what());
  }
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte
  // aligned, as the reference writer does; readers then may use aligned loads.
  text.append((8 - text.size() % 8) % 8, ' ');

  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  // Write to a temporary name and rename, so a crash never leaves a
  // half-written checkpoint under the real name.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw ModelError(tmp + ": cannot create: " + errno_text());
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const TensorToWrite& t : tensors)
      out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw ModelError(tmp + ": write failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string e = errno_text();
    std::remove(tmp.c_str());
    throw ModelError(path + ": cannot rename from " + tmp + ": " + e);
  }
}

}  // namespace chatradio::model
