#include "model/llama.h"

#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "kernels/cpu/cpu_ops.h"
#include "model/errors.h"
#include "model/gptq.h"
#include "model/quantize_config.h"
#include "model/safetensors.h"
#include "model/weight_cache.h"

namespace chatradio::model {

namespace cpu = kernels::cpu;

void Linear::apply(float* y, const float* x, int m, kernels::cpu::ThreadPool* pool) const {
  if (is_int4()) {
    cpu::matmul_q4(y, x, q4, m, pool);
  } else {
    cpu::matmul(y, x, w.data(), m, out, in, pool);
  }
}

size_t Linear::bytes() const { return is_int4() ? q4.weight_bytes() : w.size() * sizeof(float); }

HalfTable::HalfTable(std::vector<uint16_t> owned) {
  auto v = std::make_shared<const std::vector<uint16_t>>(std::move(owned));
  data_ = v->data();
  size_ = v->size();
  keep_ = std::move(v);
}

bool HalfTable::operator==(const HalfTable& o) const {
  return size_ == o.size_ && (size_ == 0 || std::memcmp(data_, o.data_, size_ * sizeof(uint16_t)) == 0);
}

size_t LlamaWeights::bytes() const {
  size_t b = embed.size() * sizeof(float) + embed_f16.size() * sizeof(uint16_t) +
             final_norm.size() * sizeof(float) + lm_head.bytes();
  for (const LayerWeights& L : layers) {
    b += (L.attn_norm.size() + L.ffn_norm.size()) * sizeof(float);
    for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) b += l->bytes();
  }
  return b;
}

namespace {

std::vector<float> read_f32(const Checkpoint& ckpt, const std::string& name,
                            const std::vector<int64_t>& shape) {
  const TensorView& t = ckpt.get(name, shape);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  to_f32(out, t);
  release_pages(t);
  return out;
}

// v = the F16 value nearest v (what an F16 checkpoint of it would hold).
void round_through_f16(std::span<float> v) {
  for (float& x : v) x = f16_to_f32(f32_to_f16(x));
}

// 1 + the largest N of the "model.layers.N." tensor names, 0 without any.
// A name whose N does not parse is left to the unused-tensor check.
int checkpoint_layer_count(const Checkpoint& ckpt) {
  constexpr std::string_view kPrefix = "model.layers.";
  int n = 0;
  for (const std::string& name : ckpt.names()) {
    if (name.compare(0, kPrefix.size(), kPrefix) != 0) continue;
    const char* begin = name.data() + kPrefix.size();
    const char* end = name.data() + name.size();
    int layer = 0;
    const auto [p, ec] = std::from_chars(begin, end, layer);
    if (ec == std::errc() && p != begin && p != end && *p == '.' && layer >= 0) n = std::max(n, layer + 1);
  }
  return n;
}

// Buffers older transformers versions saved next to the weights: they hold no
// weights (recomputed from rope_theta), so a checkpoint may carry them.
bool is_weightless_buffer(const std::string& name) {
  constexpr std::string_view kSuffix = ".self_attn.rotary_emb.inv_freq";
  return name.size() > kSuffix.size() && name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0;
}

// Rows per task when a float matrix is quantized or an f16 table checked:
// 1024 rows of a 7B lm_head are 8 MB of f16 and 16 MB of float scratch, and a
// multiple of the 8-column panel, as q4_append_columns needs.
constexpr int kSliceRows = 1024;
// How far ahead of the task being started its successors' pages are asked
// for (MADV_WILLNEED): enough to keep the disk busy through a 7B layer while
// the tensors before it are repacked, small next to the page cache.
constexpr size_t kPrefetchBytes = size_t{256} << 20;

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The loader's work as independent tasks, added in the order a serial load
// reads the checkpoint. They run on several threads, and every task writes
// only its own destination, so the weights never depend on the thread count;
// when tasks fail, the error of the first in that order is thrown, the one a
// serial load would have stopped at.
class TaskList {
 public:
  using Kind = LoadStats::Kind;

  // fn reads the tensors `inputs` (the ones present; prefetched ahead of it
  // and mapped in before it starts, see kPrefetchBytes).
  void add(Kind kind, std::vector<const TensorView*> inputs, std::function<void()> fn) {
    Task t{kind, {}, std::move(fn)};
    for (const TensorView* v : inputs) {
      if (v) t.inputs.push_back(*v);
    }
    tasks_.push_back(std::move(t));
  }
  // fn runs after every task has finished, on the calling thread, in order.
  void then(std::function<void()> fn) { after_.push_back(std::move(fn)); }

  void run(int n_threads, LoadStats* stats) {
    const auto t0 = std::chrono::steady_clock::now();
    const int n = static_cast<int>(tasks_.size());
    end_bytes_.assign(n + 1, 0);  // [n + 1] input bytes of tasks [0, i)
    for (int i = 0; i < n; ++i) {
      end_bytes_[i + 1] = end_bytes_[i];
      for (const TensorView& v : tasks_[i].inputs) end_bytes_[i + 1] += v.nbytes;
    }
    std::vector<std::exception_ptr> errors(n);
    std::atomic<int> next{0}, first_failed{n};
    // [n_threads][kKinds] seconds, each row written by one thread only.
    std::vector<std::array<double, LoadStats::kKinds>> cpu(n_threads), wall(n_threads);
    kernels::cpu::ThreadPool pool(n_threads);
    // One slot per thread; each claims the next task until none is left, so
    // a thread that drew large tensors does not hold the others up.
    pool.parallel_for(n_threads, [&](int, int thread) {
      auto timed = [&](Kind kind, const auto& fn) {
        const auto w0 = std::chrono::steady_clock::now();
        const double c0 = thread_cpu_seconds();
        fn();
        cpu[thread][kind] += thread_cpu_seconds() - c0;
        wall[thread][kind] += seconds_since(w0);
      };
      for (int i; (i = next.fetch_add(1)) < n;) {
        if (i > first_failed.load()) break;  // a serial load would have stopped before it
        prefetch_ahead_of(i);
        try {
          timed(LoadStats::kRead, [&] {
            for (const TensorView& v : tasks_[i].inputs) populate_pages(v);
          });
          timed(tasks_[i].kind, tasks_[i].fn);
        } catch (...) {
          errors[i] = std::current_exception();
          for (int f = first_failed.load(); i < f && !first_failed.compare_exchange_weak(f, i);) {
          }
        }
      }
    });
    if (first_failed.load() < n) std::rethrow_exception(errors[first_failed.load()]);
    const auto t1 = std::chrono::steady_clock::now();
    for (const auto& fn : after_) fn();
    if (stats) {
      stats->threads = n_threads;
      stats->tensors_s = std::chrono::duration<double>(t1 - t0).count();
      stats->finish_s = seconds_since(t1);
      for (int t = 0; t < n_threads; ++t) {
        for (int k = 0; k < LoadStats::kKinds; ++k) {
          stats->cpu_s[k] += cpu[t][k];
          stats->wall_s[k] += wall[t][k];
        }
      }
    }
  }

 private:
  struct Task {
    Kind kind;
    std::vector<TensorView> inputs;
    std::function<void()> fn;
  };

  // Asks for the pages of the tasks after task i up to kPrefetchBytes ahead.
  // One thread at a time; another that finds it busy goes on with its task.
  void prefetch_ahead_of(int i) {
    std::unique_lock lock(prefetch_mu_, std::try_to_lock);
    if (!lock) return;
    const int n = static_cast<int>(tasks_.size());
    prefetched_ = std::max(prefetched_, i);
    for (; prefetched_ < n && end_bytes_[prefetched_] - end_bytes_[i] < kPrefetchBytes; ++prefetched_) {
      for (const TensorView& v : tasks_[prefetched_].inputs) prefetch_pages(v);
    }
  }

  std::vector<Task> tasks_;
  std::vector<std::function<void()>> after_;
  std::vector<size_t> end_bytes_;
  std::mutex prefetch_mu_;
  int prefetched_ = 0;  // tasks [0, prefetched_) have been prefetched
};

// Adds the tasks that read linear `prefix` (without ".weight") in whichever
// form the checkpoint holds and the options ask for.
class LinearReader {
 public:
  LinearReader(const Checkpoint& ckpt, const LoadOptions& opts)
      : ckpt_(ckpt), gptq_(is_gptq_checkpoint(ckpt.dir())), opts_(opts) {
    if (gptq_) qcfg_ = load_quantize_config(ckpt.dir());
  }
  bool int4() const { return gptq_ || opts_.format == WeightFormat::kInt4; }
  // The load options the int4 weights depend on, for the weight cache key.
  std::string cache_options() const {
    return std::string(gptq_ ? "gptq" : "quantized at load") + ", group " +
           std::to_string(gptq_ ? qcfg_.group_size : opts_.group_size);
  }
  // Int4 linears are taken from `cache` where it holds them (null: none).
  void use_cache(const WeightCache* cache) { cache_ = cache; }

  // via_f16: the weight is one an int4 checkpoint stores in F16 (lm_head);
  // when quantized here it is rounded through F16 first, see add_quantized().
  void add(TaskList& tasks, Linear* dst, const std::string& prefix, int out, int in, bool via_f16 = false) {
    if (gptq_ && ckpt_.has(prefix + ".qweight")) {
      if (add_cached(tasks, dst, prefix, out, in,
                     {prefix + ".qweight", prefix + ".qzeros", prefix + ".scales", prefix + ".g_idx"})) {
        return;
      }
      auto repack = [this, dst, prefix, out, in] {
        const GptqShape shape = gptq_shape(in, out, qcfg_.group_size);
        const TensorView* g_idx = ckpt_.has(prefix + ".g_idx") ? &ckpt_.get(prefix + ".g_idx") : nullptr;
        const TensorView& qweight = ckpt_.get(prefix + ".qweight");
        const TensorView& qzeros = ckpt_.get(prefix + ".qzeros");
        const TensorView& scales = ckpt_.get(prefix + ".scales");
        *dst = Linear{out, in, {}, gptq_to_q4(gptq_view(prefix, qweight, qzeros, scales, g_idx, shape))};
        // The repacked copy is all we keep: drop the mapped pages (RSS budget).
        for (const TensorView* t : {&qweight, &qzeros, &scales, g_idx}) {
          if (t) release_pages(*t);
        }
      };
      tasks.add(LoadStats::kRepack,
                {ckpt_.find(prefix + ".qweight"), ckpt_.find(prefix + ".qzeros"), ckpt_.find(prefix + ".scales"),
                 ckpt_.find(prefix + ".g_idx")},
                repack);
      return;
    }
    const std::string name = prefix + ".weight";
    if (int4()) {
      // Prefetch only what get() will accept: a slice of a tensor of another
      // shape could lie outside it.
      const TensorView* t = ckpt_.find(name);
      if (t && t->shape != std::vector<int64_t>{out, in}) t = nullptr;
      add_quantized(tasks, dst, prefix, [this, name, out, in]() -> const TensorView& {
        return ckpt_.get(name, {out, in});
      }, t, out, in, via_f16);
      return;
    }
    tasks.add(LoadStats::kConvert, {ckpt_.find(name)},
              [this, dst, name, out, in] { *dst = Linear{out, in, read_f32(ckpt_, name, {out, in}), {}}; });
  }

  // Int4 models quantize float weights they meet (lm_head of a GPTQ
  // checkpoint, everything with --quantize int4) with the same RTN grid, a
  // task per kSliceRows output rows: RTN is per output row, so slicing cannot
  // change a bit, and a 7B lm_head never sits in memory as 0.5 GB of floats.
  // via_f16 rounds the source through F16 before quantizing: `chatradio
  // quantize` stores lm_head (and the embedding a tied lm_head is) in F16, and
  // a reload quantizes that copy, so this is what makes --quantize int4 at
  // load and a reloaded quantize output give bitwise-identical lm_heads.
  // source() returns w [out, in] (throwing as a serial load would). `mapped`
  // is the same tensor when it lies in the checkpoint's mapping: its pages
  // are then prefetched, and released once quantized. Null for a table in
  // memory, whose pages are not ours to drop.
  void add_quantized(TaskList& tasks, Linear* dst, const std::string& prefix,
                     std::function<const TensorView&()> source, const TensorView* mapped, int out, int in,
                     bool via_f16) {
    if (add_cached(tasks, dst, prefix, out, in, {prefix + ".weight"})) return;
    const int group = gptq_ ? qcfg_.group_size : opts_.group_size;
    const int n_slices = (out + kSliceRows - 1) / kSliceRows;
    auto parts = std::make_shared<std::vector<kernels::cpu::Q4Matrix>>(n_slices);  // [n_slices]
    for (int s = 0; s < n_slices; ++s) {
      const int o0 = s * kSliceRows, n = std::min(kSliceRows, out - o0);
      const int64_t first = static_cast<int64_t>(o0) * in, count = static_cast<int64_t>(n) * in;
      const std::optional<TensorView> rows_view =
          mapped ? std::optional(tensor_slice(*mapped, first, count)) : std::nullopt;
      tasks.add(LoadStats::kQuantize, {rows_view ? &*rows_view : nullptr}, [=] {
        const TensorView& w = source();
        std::vector<float> rows(static_cast<size_t>(count));  // [n, in]
        to_f32(rows, w, first);
        if (via_f16 && w.dtype != DType::F16) round_through_f16(rows);  // F16 values are their own rounding
        const GptqTensors t = gptq_quantize(rows.data(), n, in, group, /*sym=*/false);
        (*parts)[s] = gptq_to_q4(gptq_view_of(t, prefix));
        if (rows_view) release_pages(*rows_view);
      });
    }
    tasks.then([dst, parts, out, in] { *dst = Linear{out, in, {}, q4_join_columns(std::move(*parts))}; });
  }

 private:
  // A task taking linear `prefix` from the cache, when it holds it. The
  // checkpoint tensors it stands for (those of `sources` present) count as
  // read without being touched: the cache was built from them unchanged.
  bool add_cached(TaskList& tasks, Linear* dst, const std::string& prefix, int out, int in,
                  std::vector<std::string> sources) {
    if (!cache_ || !cache_->has(prefix)) return false;
    const WeightCache* cache = cache_;
    tasks.add(LoadStats::kCached, cache->views(prefix), [this, cache, dst, prefix, out, in, sources] {
      for (const std::string& name : sources) {
        if (ckpt_.has(name)) ckpt_.get(name);
      }
      *dst = Linear{out, in, {}, cache->get(prefix, out, in)};
    });
    return true;
  }

  const Checkpoint& ckpt_;
  bool gptq_;
  QuantizeConfig qcfg_;
  const LoadOptions& opts_;
  const WeightCache* cache_ = nullptr;
};

// Writes w's int4 matrices as the cache `key` in dir; the outcome for
// LoadStats::cache ("written, N MiB" or "not written: why"). Never throws:
// the weights are loaded, a failed write only makes the next start slower.
std::string write_cache(const std::string& dir, const std::string& key, const LlamaWeights& w,
                        const std::atomic<bool>* cancel) {
  try {
    const uint64_t bytes = write_weight_cache(dir, key, int4_matrices(w), cancel);
    return "written, " + std::to_string(bytes >> 20) + " MiB";
  } catch (const std::exception& e) {
    return std::string("not written: ") + e.what();
  }
}

}  // namespace

void check_layer_count(const LlamaConfig& cfg, const Checkpoint& ckpt) {
  const int n = checkpoint_layer_count(ckpt);
  if (n == cfg.num_hidden_layers) return;
  throw ModelError(ckpt.dir() + ": config.json has num_hidden_layers = " + std::to_string(cfg.num_hidden_layers) +
                   " but the checkpoint holds " + std::to_string(n) + " layers" +
                   (n ? " (model.layers.0 to model.layers." + std::to_string(n - 1) + ")" : "") +
                   (n > cfg.num_hidden_layers ? "; the extra layers would be silently dropped"
                                              : "; the missing layers have no weights"));
}

std::vector<std::string> check_all_tensors_used(const Checkpoint& ckpt, const LlamaConfig& cfg) {
  std::vector<std::string> tolerated, unused;
  for (const std::string& name : ckpt.unread()) (is_weightless_buffer(name) ? tolerated : unused).push_back(name);
  if (unused.empty()) return tolerated;
  std::string names;
  for (size_t i = 0; i < unused.size() && i < 5; ++i) names += (i ? ", " : "") + unused[i];
  if (unused.size() > 5) names += ", ... (" + std::to_string(unused.size() - 5) + " more)";
  const bool tied_head = cfg.tie_word_embeddings && ckpt.has("lm_head.weight");
  throw ModelError(ckpt.dir() + ": " + std::to_string(unused.size()) + " tensor(s) the model does not use: " + names +
                   (tied_head ? " (config.json ties lm_head to the embedding, tie_word_embeddings = true)" : "") +
                   "; a checkpoint must hold exactly the weights its config describes");
}

namespace {

// One load; `damaged` is empty, or why a first attempt's cache was unusable
// (the cache is then neither read nor trusted, and rewritten).
LlamaWeights load_once(const LlamaConfig& cfg, const std::string& model_dir, const LoadOptions& opts,
                       const std::string& damaged) {
  const auto t_open = std::chrono::steady_clock::now();
  const auto mapping = std::make_shared<const Checkpoint>(model_dir);
  const Checkpoint& ckpt = *mapping;
  check_layer_count(cfg, ckpt);
  LinearReader reader(ckpt, opts);
  const bool caching = reader.int4() && !opts.weight_cache_dir.empty();
  std::unique_ptr<WeightCache> cache;
  std::string key, cache_state = "off";
  if (caching) {
    key = weight_cache_key(ckpt, reader.cache_options());
    cache_state = "miss (" + (damaged.empty() ? "no cache for this checkpoint" : damaged) + ")";
    if (damaged.empty()) {
      try {
        cache = WeightCache::open(opts.weight_cache_dir, key);
        if (cache) cache_state = "hit";
      } catch (const WeightCacheError& e) {
        cache_state = std::string("miss (") + e.what() + ")";
      }
    }
    reader.use_cache(cache.get());
  }
  if (opts.stats) *opts.stats = LoadStats{.open_s = seconds_since(t_open)};
  const int d = cfg.hidden_size, kv = cfg.kv_dim(), ff = cfg.intermediate_size;
  LlamaWeights w;
  TaskList tasks;
  const TensorView& embed_t = ckpt.get("model.embed_tokens.weight", {cfg.vocab_size, d});
  TensorView table;  // [vocab, hidden] the F16 table a tied int4 lm_head is quantized from
  bool table_mapped = false;  // it is the checkpoint's tensor, not a converted copy
  if (reader.int4()) {
    // Int4 models keep the table in F16, as the GPTQ checkpoints `chatradio
    // quantize` writes store it. Stored in F16 already: read rows straight
    // from the mapping, which the table keeps alive, once checked (in
    // slices, released as they are checked).
    if (embed_t.dtype == DType::F16 && reinterpret_cast<uintptr_t>(embed_t.data) % alignof(uint16_t) == 0) {
      for (int r0 = 0; r0 < cfg.vocab_size; r0 += kSliceRows) {
        const int64_t first = static_cast<int64_t>(r0) * d;
        const int64_t count = static_cast<int64_t>(std::min(kSliceRows, cfg.vocab_size - r0)) * d;
        const TensorView rows = tensor_slice(embed_t, first, count);
        tasks.add(LoadStats::kConvert, {&rows}, [&embed_t, rows, first] {
          check_finite(embed_t, first, rows.numel());
          release_pages(rows);
        });
      }
      w.embed_f16 = HalfTable(mapping, reinterpret_cast<const uint16_t*>(embed_t.data),
                              static_cast<size_t>(embed_t.numel()));
      table_mapped = true;
    } else {
      const std::vector<float> embed = read_f32(ckpt, "model.embed_tokens.weight", {cfg.vocab_size, d});
      std::vector<uint16_t> half(embed.size());  // [vocab, hidden]
      for (size_t i = 0; i < embed.size(); ++i) half[i] = f32_to_f16(embed[i]);
      w.embed_f16 = HalfTable(std::move(half));
      release_pages(embed_t);
    }
    if (cfg.tie_word_embeddings) {
      // The tied lm_head is quantized from the F16 table the model embeds
      // with, which is also all a quantized checkpoint holds of it.
      table = embed_t;
      table.dtype = DType::F16;
      table.data = reinterpret_cast<const uint8_t*>(w.embed_f16.data());
      table.nbytes = w.embed_f16.size() * sizeof(uint16_t);
      reader.add_quantized(tasks, &w.lm_head, "lm_head", [&table]() -> const TensorView& { return table; },
                           table_mapped ? &table : nullptr, cfg.vocab_size, d, /*via_f16=*/false);
    }
  } else {
    w.embed = read_f32(ckpt, "model.embed_tokens.weight", {cfg.vocab_size, d});
    if (cfg.tie_word_embeddings) w.lm_head = Linear{cfg.vocab_size, d, w.embed, {}};
  }
  // Int4 models take their norms through F16 too: that is how an int4
  // checkpoint stores them, so both ways to an int4 model give the same bits.
  auto add_norm = [&](std::vector<float>* dst, const std::string& name) {
    tasks.add(LoadStats::kConvert, {ckpt.find(name)}, [&ckpt, &reader, dst, name, d] {
      *dst = read_f32(ckpt, name, {d});
      if (reader.int4()) round_through_f16(*dst);
    });
  };
  w.layers.resize(cfg.num_hidden_layers);
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& L = w.layers[l];
    add_norm(&L.attn_norm, p + "input_layernorm.weight");
    reader.add(tasks, &L.q, p + "self_attn.q_proj", d, d);
    reader.add(tasks, &L.k, p + "self_attn.k_proj", kv, d);
    reader.add(tasks, &L.v, p + "self_attn.v_proj", kv, d);
    reader.add(tasks, &L.o, p + "self_attn.o_proj", d, d);
    add_norm(&L.ffn_norm, p + "post_attention_layernorm.weight");
    reader.add(tasks, &L.gate, p + "mlp.gate_proj", ff, d);
    reader.add(tasks, &L.up, p + "mlp.up_proj", ff, d);
    reader.add(tasks, &L.down, p + "mlp.down_proj", d, ff);
  }
  add_norm(&w.final_norm, "model.norm.weight");
  if (!cfg.tie_word_embeddings) reader.add(tasks, &w.lm_head, "lm_head", cfg.vocab_size, d, /*via_f16=*/true);
  tasks.then([&] { check_all_tensors_used(ckpt, cfg); });
  tasks.run(opts.n_threads, opts.stats);
  double write_s = 0;
  if (caching && !cache && opts.write_cache_in_background) {
    w.unwritten_cache_key = key;
    cache_state += "; writing in the background";
  } else if (caching && !cache) {
    const auto t_write = std::chrono::steady_clock::now();
    cache_state += "; " + write_cache(opts.weight_cache_dir, key, w, nullptr);
    write_s = seconds_since(t_write);
  }
  if (opts.stats) {
    opts.stats->cache = cache_state;
    opts.stats->cache_write_s = write_s;
  }
  return w;
}

}  // namespace

LlamaWeights load_llama_weights(const LlamaConfig& cfg, const std::string& model_dir, const LoadOptions& opts) {
  if (opts.n_threads < 1) throw ModelError("loading needs at least one thread");
  try {
    return load_once(cfg, model_dir, opts, "");
  } catch (const WeightCacheError& e) {
    // A cached matrix failed its checks mid-load: load from the checkpoint.
    return load_once(cfg, model_dir, opts, std::string("damaged: ") + e.what());
  }
}

namespace {

const CpuBackendOptions& checked(const CpuBackendOptions& opts) {
  if (opts.n_kv_blocks <= 0 || opts.kv_block_size <= 0) {
    throw ModelError("KV cache needs a positive block count and block size");
  }
  if (opts.n_threads < 1) throw ModelError("CPU backend needs at least one thread");
  return opts;
}

}  // namespace

std::vector<std::pair<std::string, const kernels::cpu::Q4Matrix*>> int4_matrices(const LlamaWeights& w) {
  std::vector<std::pair<std::string, const kernels::cpu::Q4Matrix*>> out;
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const LayerWeights& L = w.layers[l];
    const std::pair<const char*, const Linear*> linears[] = {
        {"self_attn.q_proj", &L.q}, {"self_attn.k_proj", &L.k}, {"self_attn.v_proj", &L.v},
        {"self_attn.o_proj", &L.o}, {"mlp.gate_proj", &L.gate}, {"mlp.up_proj", &L.up},
        {"mlp.down_proj", &L.down}};
    for (const auto& [name, linear] : linears) {
      if (linear->is_int4()) out.emplace_back(p + name, &linear->q4);
    }
  }
  if (w.lm_head.is_int4()) out.emplace_back("lm_head", &w.lm_head.q4);
  return out;
}

CpuLlama::CpuLlama(LlamaConfig cfg, LlamaWeights weights, const CpuBackendOptions& opts)
    : cfg_(cfg),
      w_(std::move(weights)),
      opts_(checked(opts)),
      pool_(std::make_unique<kernels::cpu::ThreadPool>(opts_.n_threads)),
      kv_(cfg_.num_hidden_layers, opts_.n_kv_blocks, opts_.kv_block_size, cfg_.kv_dim(), opts_.kv_dtype) {}

std::unique_ptr<CpuLlama> CpuLlama::load(const std::string& model_dir, const CpuBackendOptions& opts,
                                         const LoadOptions& load) {
  LlamaConfig cfg = load_llama_config(model_dir);
  LoadOptions with_threads = load;
  with_threads.n_threads = checked(opts).n_threads;
  LlamaWeights w = load_llama_weights(cfg, model_dir, with_threads);
  auto llama = std::make_unique<CpuLlama>(cfg, std::move(w), opts);
  if (!llama->w_.unwritten_cache_key.empty()) {
    // The weights live in *llama from here on, so the writer reads them
    // there; the destructor stops and joins it.
    CpuLlama* self = llama.get();
    self->cache_writer_ = std::thread([self, dir = load.weight_cache_dir, done = load.on_cache_written] {
      // Lowest priority for this thread only (Linux: a thread id is a
      // PRIO_PROCESS target): serving comes first. Advisory.
      setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
      const auto t0 = std::chrono::steady_clock::now();
      const std::string outcome = write_cache(dir, self->w_.unwritten_cache_key, self->w_, &self->stop_cache_write_);
      if (done) done(outcome, seconds_since(t0));
    });
  }
  return llama;
}

CpuLlama::~CpuLlama() {
  stop_cache_write_ = true;
  if (cache_writer_.joinable()) cache_writer_.join();
}

void CpuLlama::forward(std::span<float> logits, const Batch& batch) {
  validate_batch(batch, cfg_, opts_.n_kv_blocks, opts_.kv_block_size, logits.size());
  const int d = cfg_.hidden_size, kv = cfg_.kv_dim(), ff = cfg_.intermediate_size;
  const int n = batch.n_tokens(), n_seqs = static_cast<int>(batch.seqs.size());
  const int bs = opts_.kv_block_size;
  const kernels::AttnShape shape{cfg_.num_attention_heads, cfg_.num_key_value_heads,
                                 cfg_.head_dim(), bs};
  const kernels::RopeParams rope{cfg_.head_dim(), cfg_.rope_theta};

  // Flatten the batch into the kernel-side arrays.
  s_.tokens.resize(n);     // [n]
  s_.positions.resize(n);  // [n]
  s_.slots.resize(n);      // [n] block_id * block_size + offset
  s_.q_start.resize(n_seqs + 1);
  s_.ctx_len.resize(n_seqs);
  int max_blocks = 0;
  for (const SeqSlice& s : batch.seqs) max_blocks = std::max(max_blocks, static_cast<int>(s.blocks.size()));
  s_.tables.assign(static_cast<size_t>(n_seqs) * max_blocks, 0);  // [n_seqs, max_blocks]
  int row = 0;
  for (int i = 0; i < n_seqs; ++i) {
    const SeqSlice& s = batch.seqs[i];
    s_.q_start[i] = row;
    for (size_t j = 0; j < s.tokens.size(); ++j, ++row) {
      const int pos = s.start_pos + static_cast<int>(j);
      s_.tokens[row] = s.tokens[j];
      s_.positions[row] = pos;
      s_.slots[row] = s.blocks[pos / bs] * bs + pos % bs;
    }
    s_.ctx_len[i] = s.start_pos + static_cast<int>(s.tokens.size());
    std::copy(s.blocks.begin(), s.blocks.end(), s_.tables.begin() + static_cast<size_t>(i) * max_blocks);
  }
  s_.q_start[n_seqs] = row;
  const kernels::PagedBatch paged{n_seqs, s_.q_start.data(), s_.ctx_len.data(), s_.tables.data(),
                                  max_blocks};

  s_.x.resize(static_cast<size_t>(n) * d);     // [n, hidden] residual stream
  s_.h.resize(static_cast<size_t>(n) * d);     // [n, hidden] normed input
  s_.q.resize(static_cast<size_t>(n) * d);     // [n, n_heads * head_dim]
  s_.k.resize(static_cast<size_t>(n) * kv);    // [n, kv_dim]
  s_.v.resize(static_cast<size_t>(n) * kv);    // [n, kv_dim]
  s_.att.resize(static_cast<size_t>(n) * d);   // [n, hidden] attention output
  s_.gate.resize(static_cast<size_t>(n) * ff); // [n, inter]
  s_.up.resize(static_cast<size_t>(n) * ff);   // [n, inter]

  if (w_.embed_f16.empty()) {
    cpu::embedding(s_.x.data(), w_.embed.data(), s_.tokens.data(), n, d);
  } else {
    cpu::embedding_f16(s_.x.data(), w_.embed_f16.data(), s_.tokens.data(), n, d);
  }
  kernels::cpu::ThreadPool* pool = pool_.get();
  for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
    const LayerWeights& L = w_.layers[l];
    cpu::rmsnorm(s_.h.data(), s_.x.data(), L.attn_norm.data(), n, d, cfg_.rms_norm_eps);
    L.q.apply(s_.q.data(), s_.h.data(), n, pool);
    L.k.apply(s_.k.data(), s_.h.data(), n, pool);
    L.v.apply(s_.v.data(), s_.h.data(), n, pool);
    cpu::rope(s_.q.data(), s_.positions.data(), n, cfg_.num_attention_heads, rope);
    cpu::rope(s_.k.data(), s_.positions.data(), n, cfg_.num_key_value_heads, rope);
    // Same two ops on a float or a half cache.
    auto attend = [&](auto* k_cache, auto* v_cache) {
      cpu::kv_write(k_cache, v_cache, s_.k.data(), s_.v.data(), s_.slots.data(), n, shape);
      cpu::attention(s_.att.data(), s_.q.data(), k_cache, v_cache, paged, shape, pool);
    };
    if (kv_.dtype() == KvDtype::kF16) {
      attend(kv_.k_f16(l), kv_.v_f16(l));
    } else {
      attend(kv_.k_f32(l), kv_.v_f32(l));
    }
    L.o.apply(s_.h.data(), s_.att.data(), n, pool);
    cpu::add(s_.x.data(), s_.x.data(), s_.h.data(), n * d);

    cpu::rmsnorm(s_.h.data(), s_.x.data(), L.ffn_norm.data(), n, d, cfg_.rms_norm_eps);
    L.gate.apply(s_.gate.data(), s_.h.data(), n, pool);
    L.up.apply(s_.up.data(), s_.h.data(), n, pool);
    cpu::swiglu(s_.gate.data(), s_.gate.data(), s_.up.data(), n * ff, pool);
    L.down.apply(s_.h.data(), s_.gate.data(), n, pool);
    cpu::add(s_.x.data(), s_.x.data(), s_.h.data(), n * d);
  }

  // Only the rows that need logits go through the final norm and lm_head: for
  // generation that is one row per sequence, which saves vocab x hidden work per
  // prompt token.
  const int rows = batch.n_logit_rows();
  s_.last.resize(static_cast<size_t>(rows) * d);  // [rows, hidden]
  int out_row = 0;
  for (int i = 0; i < n_seqs; ++i) {
    const int first = batch.seqs[i].all_logits ? s_.q_start[i] : s_.q_start[i + 1] - 1;
    const int count = s_.q_start[i + 1] - first;
    std::memcpy(s_.last.data() + static_cast<size_t>(out_row) * d,
                s_.x.data() + static_cast<size_t>(first) * d, sizeof(float) * count * d);
    out_row += count;
  }
  cpu::rmsnorm(s_.last.data(), s_.last.data(), w_.final_norm.data(), rows, d, cfg_.rms_norm_eps);
  w_.lm_head.apply(logits.data(), s_.last.data(), rows, pool);
}

void CpuLlama::copy_kv_block(int dst, int src) {
  if (dst < 0 || src < 0 || dst >= opts_.n_kv_blocks || src >= opts_.n_kv_blocks) {
    throw ModelError("copy_kv_block: block id out of range");
  }
  kv_.copy_block(dst, src);
}

}  // namespace chatradio::model
