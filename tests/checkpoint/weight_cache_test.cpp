// The int4 weight cache (model/weight_cache.h): a load that finds none
// builds the weights and writes it; the next maps it and must give the very
// same bytes and logits; a changed checkpoint, a damaged or truncated file
// and an unwritable directory each fall back to the checkpoint and say so in
// LoadStats::cache, never failing the load. The model: small_model.h.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "helpers.h"
#include "kernels/cpu/q4.h"
#include "model/llama.h"
#include "model/quantizer.h"
#include "model/weight_cache.h"
#include "small_model.h"

namespace chatradio::model {
namespace {

namespace fs = std::filesystem;
using chatradio::testing::TempDir;
using namespace testing_small;

std::vector<std::string> cache_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

// Loads dir with the weight cache in cache_dir; returns the weights, stats in *stats.
LlamaWeights load_cached(const std::string& dir, WeightFormat format, const std::string& cache_dir,
                         LoadStats* stats, int threads = 2) {
  LoadOptions o{format, 32, threads, stats};
  o.weight_cache_dir = cache_dir;
  return load_llama_weights(load_llama_config(dir), dir, o);
}

void expect_all_borrowed(const LlamaWeights& w) {
  EXPECT_TRUE(w.lm_head.q4.is_borrowed());
  for (const LayerWeights& l : w.layers) {
    for (const Linear* x : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) EXPECT_TRUE(x->q4.is_borrowed());
  }
}

struct Case {
  const char* name;
  bool tied;
  bool gptq;  // the `chatradio quantize` output; else the F16 model quantized at load
};

class WeightCacheLoad : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const Case c = GetParam();
    dir_ = tmp_ / "float";
    write_model(dir_, DType::F16, c.tied);
    if (c.gptq) {
      quantize_checkpoint(tmp_ / "gptq", dir_, {.group_size = 32});
      dir_ = tmp_ / "gptq";
    }
    format_ = c.gptq ? WeightFormat::kAsStored : WeightFormat::kInt4;
    cache_ = tmp_ / "cache";
    fs::create_directories(cache_);
    reference_ = load_llama_weights(load_llama_config(dir_), dir_, {format_, 32, 1});
  }
  // A load after the cache went stale or bad: the weights come from the
  // checkpoint, the cache is rewritten and the next load hits. Returns the
  // rebuilding load's LoadStats::cache, which must start with `state`.
  std::string expect_rebuilt(const std::string& state) {
    LoadStats stats;
    const LlamaWeights w = load_cached(dir_, format_, cache_, &stats);
    EXPECT_EQ(stats.cache.rfind(state, 0), 0u) << stats.cache;
    EXPECT_NE(stats.cache.find("; written"), std::string::npos) << stats.cache;
    expect_same_weights(reference_, w);
    LoadStats again;
    load_cached(dir_, format_, cache_, &again);
    EXPECT_EQ(again.cache, "hit");
    return stats.cache;
  }
  // The only file in the cache directory.
  std::string cache_file() {
    const std::vector<std::string> files = cache_files(cache_);
    EXPECT_EQ(files.size(), 1u);
    return files.empty() ? "" : cache_ + "/" + files[0];
  }

  TempDir tmp_;
  std::string dir_, cache_;
  WeightFormat format_{};
  LlamaWeights reference_;
};

TEST_P(WeightCacheLoad, MissWritesItAndTheNextLoadMapsTheSameBytes) {
  LoadStats stats;
  const LlamaWeights first = load_cached(dir_, format_, cache_, &stats);
  EXPECT_EQ(stats.cache.rfind("miss (no cache for this checkpoint); written, ", 0), 0u) << stats.cache;
  expect_same_weights(reference_, first);
  const std::string file = cache_file();
  EXPECT_EQ(fs::path(file).filename().string().rfind("chatradio-q4-", 0), 0u) << file;
  EXPECT_EQ(fs::path(file).extension(), ".cache");

  const LlamaWeights second = load_cached(dir_, format_, cache_, &stats, 3);
  EXPECT_EQ(stats.cache, "hit");
  EXPECT_EQ(stats.cache_write_s, 0.0);
  EXPECT_EQ(stats.cpu_s[LoadStats::kRepack] + stats.cpu_s[LoadStats::kQuantize], 0.0);
  expect_all_borrowed(second);
  expect_same_weights(reference_, second);

  // The model runs on the mapped weights exactly as on built ones.
  LoadOptions with_cache{format_, 32};
  with_cache.weight_cache_dir = cache_;
  const CpuBackendOptions bo{.n_kv_blocks = 4, .kv_block_size = 16, .n_threads = 2};
  const auto built = CpuLlama::load(dir_, bo, {format_, 32});
  const auto mapped = CpuLlama::load(dir_, bo, with_cache);
  expect_all_borrowed(mapped->weights());
  const std::vector<float> a = prompt_logits(*built), b = prompt_logits(*mapped);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// The server's way: the model is returned at once and the cache written on a
// background thread, whose outcome arrives through on_cache_written.
TEST_P(WeightCacheLoad, BackgroundWriteReportsItsOutcomeAndTheNextLoadHits) {
  std::promise<std::string> outcome;
  LoadStats stats;
  LoadOptions o{format_, 32, 2, &stats};
  o.weight_cache_dir = cache_;
  o.write_cache_in_background = true;
  o.on_cache_written = [&outcome](const std::string& what, double seconds) {
    EXPECT_GE(seconds, 0.0);
    outcome.set_value(what);
  };
  const CpuBackendOptions bo{.n_kv_blocks = 4, .kv_block_size = 16, .n_threads = 2};
  auto first = CpuLlama::load(dir_, bo, o);
  EXPECT_EQ(stats.cache, "miss (no cache for this checkpoint); writing in the background");
  std::future<std::string> done = outcome.get_future();
  ASSERT_EQ(done.wait_for(std::chrono::seconds(120)), std::future_status::ready);
  EXPECT_EQ(done.get().rfind("written, ", 0), 0u);
  first.reset();
  o.on_cache_written = nullptr;
  const auto second = CpuLlama::load(dir_, bo, o);
  EXPECT_EQ(stats.cache, "hit");
  expect_all_borrowed(second->weights());
  expect_same_weights(reference_, second->weights());
}

// Destroying the model while its cache is being written stops the write: no
// crash, and no temporary file left (a finished file may remain).
TEST_P(WeightCacheLoad, DestroyingTheModelStopsABackgroundWrite) {
  LoadOptions o{format_, 32, 2};
  o.weight_cache_dir = cache_;
  o.write_cache_in_background = true;
  CpuLlama::load(dir_, {.n_kv_blocks = 4, .kv_block_size = 16, .n_threads = 2}, o).reset();
  for (const std::string& f : cache_files(cache_)) EXPECT_FALSE(f.ends_with(".tmp")) << f;
}

TEST_P(WeightCacheLoad, ChangedCheckpointMissesAndReplacesTheOldCache) {
  LoadStats stats;
  load_cached(dir_, format_, cache_, &stats);
  const std::string old_file = cache_file();
  // A rewritten checkpoint file: same bytes, new modification time.
  const std::string st = dir_ + "/model.safetensors";
  struct stat s {};
  ASSERT_EQ(::stat(st.c_str(), &s), 0);
  const timespec times[2] = {s.st_atim, {s.st_mtim.tv_sec + 7, s.st_mtim.tv_nsec}};
  ASSERT_EQ(::utimensat(AT_FDCWD, st.c_str(), times, 0), 0);
  expect_rebuilt("miss (no cache for this checkpoint); written");
  EXPECT_NE(cache_file(), old_file);  // the only file: the old one is gone
}

TEST_P(WeightCacheLoad, DamagedCacheIsRebuiltFromTheCheckpoint) {
  LoadStats stats;
  load_cached(dir_, format_, cache_, &stats);
  const std::string file = cache_file();
  {
    // One bit in the middle of the data: some matrix's nibbles.
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const std::streamoff mid = f.tellg() / 2;
    char byte = 0;
    f.seekg(mid);
    f.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x10);
    f.seekp(mid);
    f.write(&byte, 1);
  }
  const std::string state = expect_rebuilt("miss (damaged: " + file);
  EXPECT_NE(state.find("content hash mismatch"), std::string::npos) << state;
}

TEST_P(WeightCacheLoad, TruncatedCacheIsAMissAndIsRewritten) {
  LoadStats stats;
  load_cached(dir_, format_, cache_, &stats);
  const std::string file = cache_file();
  fs::resize_file(file, fs::file_size(file) / 2);
  expect_rebuilt("miss (" + file);
}

TEST_P(WeightCacheLoad, UnwritableCacheOnlyCostsTheCache) {
  // Not a directory: the write fails whatever the user's rights (CI runs as root).
  const std::string not_dir = tmp_ / "plain-file";
  std::ofstream(not_dir) << "x";
  LoadStats stats;
  const LlamaWeights w = load_cached(dir_, format_, not_dir, &stats);
  EXPECT_EQ(stats.cache.rfind("miss (no cache for this checkpoint); not written: ", 0), 0u) << stats.cache;
  expect_same_weights(reference_, w);
}

INSTANTIATE_TEST_SUITE_P(Paths, WeightCacheLoad,
                         ::testing::Values(Case{"Gptq", false, true}, Case{"TiedGptq", true, true},
                                           Case{"F16ToInt4", false, false}, Case{"TiedF16ToInt4", true, false}),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

TEST(WeightCache, FloatLoadsIgnoreIt) {
  TempDir tmp;
  write_model(tmp / "float", DType::F16, false);
  fs::create_directories(tmp / "cache");
  LoadStats stats;
  load_cached(tmp / "float", WeightFormat::kAsStored, tmp / "cache", &stats);
  EXPECT_EQ(stats.cache, "off");
  EXPECT_TRUE(cache_files(tmp / "cache").empty());
}

TEST(WeightCache, QuantizedAtLoadWithAnotherGroupSizeIsAnotherCache) {
  TempDir tmp;
  write_model(tmp / "float", DType::F16, false);
  fs::create_directories(tmp / "cache");
  const std::string dir = tmp / "float";
  LoadStats stats;
  LoadOptions o{WeightFormat::kInt4, 32, 2, &stats};
  o.weight_cache_dir = tmp / "cache";
  load_llama_weights(load_llama_config(dir), dir, o);
  o.group_size = 64;
  const LlamaWeights w = load_llama_weights(load_llama_config(dir), dir, o);
  EXPECT_EQ(stats.cache.rfind("miss (no cache for this checkpoint); written", 0), 0u) << stats.cache;
  expect_same_weights(load_llama_weights(load_llama_config(dir), dir, {WeightFormat::kInt4, 64, 1}), w);
}

// Act-order (GPTQ desc_act) matrices carry an input order; it round-trips too.
TEST(WeightCacheFile, ActOrderMatrixRoundTrips) {
  const int n = 40, k = 256, groups = 4;
  std::mt19937 g(7);
  std::vector<int32_t> qweight(static_cast<size_t>(k / 8) * n), qzeros(static_cast<size_t>(groups) * (n / 8)), g_idx(k);
  std::vector<uint16_t> scales(static_cast<size_t>(groups) * n);
  for (auto& v : qweight) v = static_cast<int32_t>(g());
  for (auto& v : qzeros) v = static_cast<int32_t>(g());
  for (auto& v : scales) v = f32_to_f16(0.001f + 0.01f * static_cast<float>(g() % 100) / 100.0f);
  for (int i = 0; i < k; ++i) g_idx[i] = (i * 3 + i / 64) % groups;  // 64 inputs per group, interleaved
  kernels::cpu::Q4GptqSource src{qweight.data(), qzeros.data(), scales.data(), g_idx.data(), k, n, groups, k, n};
  const kernels::cpu::Q4Matrix m = kernels::cpu::q4_from_gptq(src);
  ASSERT_NE(m.perm_data(), nullptr);
  TempDir tmp;
  write_weight_cache(tmp.path(), "0123456789abcdef", {{"x", &m}});
  const auto cache = WeightCache::open(tmp.path(), "0123456789abcdef");
  ASSERT_TRUE(cache);
  const kernels::cpu::Q4Matrix back = cache->get("x", n, k);
  EXPECT_TRUE(back.is_borrowed());
  EXPECT_TRUE(same_q4(m, back));
  std::vector<float> x(3 * k), y0(3 * n), y1(3 * n);
  for (float& v : x) v = static_cast<float>(static_cast<int>(g() % 2001) - 1000) / 500.0f;
  kernels::cpu::matmul_q4(y0.data(), x.data(), m, 3, nullptr);
  kernels::cpu::matmul_q4(y1.data(), x.data(), back, 3, nullptr);
  EXPECT_EQ(std::memcmp(y0.data(), y1.data(), y0.size() * sizeof(float)), 0);
  EXPECT_THROW(cache->get("x", n, k + 1), WeightCacheError);
  EXPECT_THROW(cache->get("y", n, k), WeightCacheError);
}

TEST(WeightCacheFile, OpenWithoutAFileIsNullAndAForeignKeyIsAnError) {
  TempDir tmp;
  EXPECT_EQ(WeightCache::open(tmp.path(), "00000000000000aa"), nullptr);
  // A cache renamed to another key's name is not trusted.
  write_weight_cache(tmp.path(), "00000000000000aa", {});
  fs::rename(tmp / weight_cache_file_name("00000000000000aa"), tmp / weight_cache_file_name("00000000000000bb"));
  EXPECT_THROW(WeightCache::open(tmp.path(), "00000000000000bb"), WeightCacheError);
}

TEST(ContentHash, DependsOnEveryBitTheLengthAndTheSeed) {
  std::vector<uint8_t> buf(1000);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 31);
  const uint64_t h = content_hash(buf.data(), buf.size());
  EXPECT_EQ(h, content_hash(buf.data(), buf.size()));
  EXPECT_NE(h, content_hash(buf.data(), buf.size() - 1));
  EXPECT_NE(h, content_hash(buf.data(), buf.size(), 1));
  for (size_t at : {size_t{0}, size_t{31}, size_t{500}, size_t{997}, size_t{999}}) {
    buf[at] ^= 1;
    EXPECT_NE(h, content_hash(buf.data(), buf.size())) << at;
    buf[at] ^= 1;
  }
}

}  // namespace
}  // namespace chatradio::model
