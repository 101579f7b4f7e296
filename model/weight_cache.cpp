// Weight cache files (weight_cache.h). Layout of a file: safetensors, data
// section 64-byte aligned, tensors in the order
//   <linear>.qs     U8  [n_panels, k_blocks * 128]   for every linear, then
//   <linear>.scales F16 [n_panels, n_groups * 8]     for every linear, then
//   <linear>.zeros  U8  [n_panels, n_groups * 8]     for every linear, then
//   <linear>.perm   I32 [k_blocks * 32]              for act-order linears only,
// so every nibble array starts on a cache line (each is a multiple of 128
// bytes) and every other array on its element size. Metadata: "format",
// "version", "key", and per linear "n k k_blocks group_blocks n_groups hash".
#include "model/weight_cache.h"

#include <sys/stat.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "model/file_util.h"

namespace chatradio::model {
namespace {

namespace q4 = kernels::cpu;

constexpr const char* kFormat = "chatradio-q4-cache";
constexpr const char* kVersion = "1";
constexpr const char* kPrefix = "chatradio-q4-";
constexpr const char* kSuffix = ".cache";
constexpr size_t kAlign = 64;  // data section start: nibble rows on cache lines

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

// Size, modification time and safetensors header of one checkpoint file:
// what changes when the file is replaced or rewritten.
std::string file_fingerprint(const SafetensorsFile& f) {
  struct stat st {};
  if (::stat(f.path().c_str(), &st) != 0) throw ModelError(f.path() + ": cannot stat: " + std::strerror(errno));
  return std::filesystem::path(f.path()).filename().string() + " " + std::to_string(st.st_size) + " " +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + " " +
         hex64(content_hash(f.header().data(), f.header().size()));
}

struct Dims {
  int n = 0, k = 0, k_blocks = 0, group_blocks = 0, n_groups = 0;
  uint64_t hash = 0;
};

// One array of a matrix as a cache file stores it. The shape follows from
// the matrix's dimensions alone; data is null where the matrix has none (no
// input order, or dimensions only).
struct Array {
  const char* suffix;  // after the linear's name
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t bytes;
};

// A matrix's arrays in file order (which is also the hash order).
std::vector<Array> arrays_of(const q4::Q4Matrix& m) {
  const int64_t params = int64_t{m.n_groups} * q4::kQ4PanelCols;
  const int64_t positions = int64_t{m.k_blocks} * q4::kQ4BlockInputs;
  return {{".qs", DType::U8, {m.n_panels, int64_t{m.k_blocks} * q4::kQ4BlockBytes}, m.nibbles(), m.nibble_bytes()},
          {".scales", DType::F16, {m.n_panels, params}, m.scale_data(), m.param_count() * sizeof(uint16_t)},
          {".zeros", DType::U8, {m.n_panels, params}, m.zero_data(), m.param_count()},
          {".perm", DType::I32, {positions}, m.perm_data(), static_cast<size_t>(positions) * sizeof(int32_t)}};
}

// Content hash of a matrix's arrays, in file order.
uint64_t matrix_hash(const q4::Q4Matrix& m) {
  uint64_t h = 0;
  for (const Array& a : arrays_of(m)) {
    if (a.data) h = content_hash(a.data, a.bytes, h);
  }
  return h;
}

}  // namespace

uint64_t content_hash(const void* data, size_t n, uint64_t seed) {
  constexpr uint64_t kM1 = 0x9E3779B185EBCA87ULL, kM2 = 0xC2B2AE3D27D4EB4FULL, kM3 = 0x165667B19E3779F9ULL;
  const auto* p = static_cast<const uint8_t*>(data);
  auto mix = [&](uint64_t acc, uint64_t v) { return rotl(acc + v * kM2, 31) * kM1; };
  // Four independent lanes so the multiplies overlap.
  uint64_t a[4] = {seed + kM1 + kM2, seed + kM2, seed, seed - kM1};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int l = 0; l < 4; ++l) a[l] = mix(a[l], load_u64(p + i + 8 * l));
  }
  uint64_t h = rotl(a[0], 1) + rotl(a[1], 7) + rotl(a[2], 12) + rotl(a[3], 18) + n;
  for (; i + 8 <= n; i += 8) h = rotl(h ^ mix(0, load_u64(p + i)), 27) * kM1 + kM3;
  for (; i < n; ++i) h = rotl(h ^ (p[i] * kM3), 11) * kM1;
  h ^= h >> 33;
  h *= kM2;
  h ^= h >> 29;
  h *= kM3;
  return h ^ (h >> 32);
}

std::string weight_cache_key(const Checkpoint& ckpt, const std::string& options) {
  std::string desc = std::string(kFormat) + " " + kVersion + "; layout " + std::to_string(q4::kQ4BlockInputs) + "/" +
                     std::to_string(q4::kQ4PanelCols) + "/" + std::to_string(q4::kQ4BlockBytes) + "; " + options + "\n";
  for (const char* name : {"config.json", "quantize_config.json", "model.safetensors.index.json"}) {
    const std::string path = ckpt.dir() + "/" + name;
    if (!std::filesystem::is_regular_file(path)) continue;
    const std::string text = read_text_file(path, "cannot open", /*with_errno=*/true);
    desc += std::string(name) + " " + hex64(content_hash(text.data(), text.size())) + "\n";
  }
  for (const SafetensorsFile* f : ckpt.files()) desc += file_fingerprint(*f) + "\n";
  return hex64(content_hash(desc.data(), desc.size()));
}

std::string weight_cache_file_name(const std::string& key) { return kPrefix + key + kSuffix; }

std::unique_ptr<WeightCache> WeightCache::open(const std::string& dir, const std::string& key) {
  const std::string path = dir + "/" + weight_cache_file_name(key);
  if (!std::filesystem::is_regular_file(path)) return nullptr;
  std::shared_ptr<const SafetensorsFile> file;
  try {
    file = std::make_shared<const SafetensorsFile>(path);
  } catch (const ModelError& e) {
    throw WeightCacheError(e.what());
  }
  const auto& meta = file->metadata();
  auto value = [&](const char* k) {
    const auto it = meta.find(k);
    return it == meta.end() ? std::string() : it->second;
  };
  if (value("format") != kFormat || value("version") != kVersion || value("key") != key) {
    throw WeightCacheError(path + ": not a version " + kVersion + " weight cache for key " + key);
  }
  return std::unique_ptr<WeightCache>(new WeightCache(std::move(file)));
}

bool WeightCache::has(const std::string& linear) const { return file_->metadata().count(linear) != 0; }

std::vector<const TensorView*> WeightCache::views(const std::string& linear) const {
  std::vector<const TensorView*> out;
  for (const char* part : {".qs", ".scales", ".zeros", ".perm"}) {
    const auto it = file_->tensors().find(linear + part);
    if (it != file_->tensors().end()) out.push_back(&it->second);
  }
  return out;
}

q4::Q4Matrix WeightCache::get(const std::string& linear, int out, int in) const {
  auto bad = [&](const std::string& why) { return WeightCacheError(path() + ": " + linear + ": " + why); };
  const auto meta = file_->metadata().find(linear);
  if (meta == file_->metadata().end()) throw bad("missing");
  Dims d;
  char hash_hex[17] = {};
  if (std::sscanf(meta->second.c_str(), "%d %d %d %d %d %16s", &d.n, &d.k, &d.k_blocks, &d.group_blocks, &d.n_groups,
                  hash_hex) != 6 ||
      std::sscanf(hash_hex, "%" SCNx64, &d.hash) != 1) {
    throw bad("unreadable dimensions '" + meta->second + "'");
  }
  if (d.n != out || d.k != in) {
    throw bad("holds [" + std::to_string(d.n) + ", " + std::to_string(d.k) + "], the model needs [" +
              std::to_string(out) + ", " + std::to_string(in) + "]");
  }
  if (d.k_blocks <= 0 || d.group_blocks <= 0 || d.k_blocks > (1 << 24) ||
      static_cast<int64_t>(d.k_blocks) * q4::kQ4BlockInputs < d.k ||
      d.n_groups != (d.k_blocks + d.group_blocks - 1) / d.group_blocks) {
    throw bad("inconsistent block layout '" + meta->second + "'");
  }
  q4::Q4Matrix m;
  m.n = d.n;
  m.k = d.k;
  m.n_panels = (d.n + q4::kQ4PanelCols - 1) / q4::kQ4PanelCols;
  m.k_blocks = d.k_blocks;
  m.group_blocks = d.group_blocks;
  m.n_groups = d.n_groups;
  // The stored arrays, checked against the shapes the dimensions give.
  const uint8_t* data[4] = {};  // qs, scales, zeros, perm (arrays_of order)
  const std::vector<Array> expected = arrays_of(m);
  for (size_t i = 0; i < expected.size(); ++i) {
    const Array& e = expected[i];
    const auto it = file_->tensors().find(linear + e.suffix);
    if (it == file_->tensors().end()) continue;
    const TensorView& t = it->second;
    const char* what = e.suffix + 1;
    if (t.dtype != e.dtype || t.shape != e.shape) {
      throw bad(std::string(what) + " is " + dtype_name(t.dtype) + " " + shape_str(t.shape) + ", expected " +
                dtype_name(e.dtype) + " " + shape_str(e.shape));
    }
    if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(e.dtype) != 0) throw bad(std::string(what) + " is misaligned");
    data[i] = t.data;
  }
  if (!data[0] || !data[1] || !data[2]) throw bad("arrays missing");
  const uint8_t* zeros = data[2];
  m.borrowed = {file_, data[0], reinterpret_cast<const uint16_t*>(data[1]), zeros,
                reinterpret_cast<const int32_t*>(data[3])};
  if (matrix_hash(m) != d.hash) throw bad("content hash mismatch (damaged file)");
  // Past the hash, the file is what a writer of this version produced; these
  // checks keep a forged one from steering the kernels out of bounds.
  for (size_t i = 0; i < m.param_count(); ++i) {
    if (zeros[i] > 16) throw bad("zero point " + std::to_string(zeros[i]) + " outside 0..16");
  }
  if (const int32_t* p = m.perm_data()) {
    for (int64_t i = 0; i < int64_t{d.k_blocks} * q4::kQ4BlockInputs; ++i) {
      if (p[i] < -1 || p[i] >= d.k) throw bad("input order names input " + std::to_string(p[i]));
    }
  }
  return m;
}

uint64_t write_weight_cache(const std::string& dir, const std::string& key,
                            const std::vector<std::pair<std::string, const q4::Q4Matrix*>>& matrices,
                            const std::atomic<bool>* cancel) {
  std::map<std::string, std::string> meta{{"format", kFormat}, {"version", kVersion}, {"key", key}};
  // Array by array (all nibbles first, so each starts on a cache line), then
  // matrix by matrix; a matrix without an input order has no .perm.
  std::vector<TensorSpec> specs;
  std::vector<std::span<const uint8_t>> bytes;  // [specs]
  std::vector<std::vector<Array>> arrays;       // [matrices]
  for (const auto& [name, m] : matrices) {
    arrays.push_back(arrays_of(*m));
    meta[name] = std::to_string(m->n) + " " + std::to_string(m->k) + " " + std::to_string(m->k_blocks) + " " +
                 std::to_string(m->group_blocks) + " " + std::to_string(m->n_groups) + " " + hex64(matrix_hash(*m));
  }
  for (size_t i = 0; i < 4; ++i) {
    for (size_t j = 0; j < matrices.size(); ++j) {
      const Array& a = arrays[j][i];
      if (!a.data) continue;
      specs.push_back({matrices[j].first + a.suffix, a.dtype, a.shape});
      bytes.emplace_back(static_cast<const uint8_t*>(a.data), a.bytes);
    }
  }
  const std::string file = weight_cache_file_name(key);
  SafetensorsWriter writer(dir + "/" + file, specs, meta, kAlign);
  for (size_t i = 0; i < specs.size(); ++i) {
    if (cancel && cancel->load()) throw ModelError(writer.path() + ": write cancelled");
    writer.write(specs[i].name, bytes[i]);
  }
  // Not fsynced: a cache lost or torn by a crash fails its checks and is rebuilt.
  writer.finish(/*durable=*/false);
  // Caches of earlier checkpoints or versions would only take disk space.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    // Only finished files: a .tmp may be another process's write in progress.
    if (name.rfind(kPrefix, 0) == 0 && name.ends_with(kSuffix) && name != file) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
  return writer.data_bytes();
}

}  // namespace chatradio::model
