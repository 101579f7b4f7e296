#include "server/service/server.h"

#include <grpcpp/ext/health_check_service_server_builder_option.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>

#include "model/errors.h"
#include "model/llama.h"
#ifdef CHATRADIO_WITH_CUDA
#include "model/cuda/llama_cuda.h"
#endif
#include "server/service/backend_choice.h"
#include "server/service/health.h"
#include "server/text/segment.h"

namespace chatradio::service {

namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

// FNV-1a 64: a fingerprint, not a security measure.
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ULL;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  }
  void add(const std::string& s) { add(s.data(), s.size()); }
};

// Checkpoint fingerprint: config.json, and of every safetensors file its name,
// size, header (dtypes, shapes, offsets) and 16 samples of 64 KiB spread over
// the weights. Cheap on a 13 GB checkpoint, and different for any two
// fine-tunes in practice (their weights differ everywhere).
std::string fingerprint(const std::string& dir) {
  Fnv f;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name == "config.json" || e.path().extension() == ".safetensors") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<char> buf(64 * 1024);
  for (const fs::path& p : files) {
    std::ifstream in(p, std::ios::binary);
    if (!in) continue;
    const uint64_t size = fs::file_size(p);
    f.add(p.filename().string());
    f.add(&size, sizeof size);
    uint64_t header = size;  // config.json: all of it
    if (p.extension() == ".safetensors") {
      uint64_t len = 0;
      in.read(reinterpret_cast<char*>(&len), 8);
      header = std::min<uint64_t>(size, 8 + len);
      in.seekg(0);
    }
    for (uint64_t done = 0; done < header;) {
      const uint64_t n = std::min<uint64_t>(buf.size(), header - done);
      in.read(buf.data(), static_cast<std::streamsize>(n));
      f.add(buf.data(), static_cast<size_t>(in.gcount()));
      if (in.gcount() == 0) break;
      done += static_cast<uint64_t>(in.gcount());
    }
    if (header < size) {
      for (int i = 0; i < 16; ++i) {
        const uint64_t off = header + (size - header) * static_cast<uint64_t>(i) / 16;
        in.clear();
        in.seekg(static_cast<std::streamoff>(off));
        in.read(buf.data(), static_cast<std::streamsize>(std::min<uint64_t>(buf.size(), size - off)));
        f.add(buf.data(), static_cast<size_t>(in.gcount()));
      }
    }
  }
  char out[24];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(f.h));
  return out;
}

std::string weights_name(const std::string& dir, const std::string& quantize, int group) {
  const fs::path qc = fs::path(dir) / "quantize_config.json";
  if (fs::exists(qc)) {
    int g = 128;
    try {
      std::ifstream in(qc);
      const nlohmann::json j = nlohmann::json::parse(in);
      g = j.value("group_size", 128);
    } catch (const std::exception&) {
      // The loader has validated the file already; the name is informative only.
    }
    return "int4-gptq-g" + std::to_string(g);
  }
  if (quantize == "int4") return "int4-rtn-g" + std::to_string(group);
  return "float32";
}

}  // namespace

ChatradioServer::ChatradioServer(ServerOptions opts, ServerHooks hooks)
    : opts_(std::move(opts)), hooks_(std::move(hooks)), log_(hooks_.log_sink) {}

ChatradioServer::~ChatradioServer() {
  if (server_) {
    opts_.drain_grace_s = 0;
    opts_.drain_timeout_s = 0;
    drain();
  }
  metrics_.set_engine(nullptr);
  if (service_) service_->set_runtime(nullptr);
  runtime_.reset();  // the engine stops before the backend goes
}

const engine::Engine* ChatradioServer::engine() const { return runtime_ ? runtime_->engine.get() : nullptr; }

void ChatradioServer::start() {
  library_log_ = std::make_unique<LibraryLogRoute>(log_);
  templates_ = prompt::TemplateSet::load(opts_.templates_path);
  if (!opts_.auth_token_file.empty()) auth_ = TokenAuth::from_file(opts_.auth_token_file);
  if (!opts_.jieba_dict.empty()) {
    try {
      jieba_ = std::make_unique<text::JiebaDict>(text::JiebaDict::load(opts_.jieba_dict));
    } catch (const text::TextError& e) {
      throw OptionsError(std::string("--jieba-dict: ") + e.what());
    }
  }
  ServiceDeps deps;
  deps.opts = &opts_;
  deps.templates = &templates_;
  deps.auth = &auth_;
  deps.jieba = jieba_.get();
  deps.metrics = &metrics_;
  deps.log = &log_;
  service_ = std::make_unique<ImpressionServiceImpl>(deps);

  // A process-wide switch read by the next ServerBuilder.
  if (opts_.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder b;
  // Our health service as the server's HealthCheckServiceInterface (health.h
  // says why not gRPC's default one). The server owns it; it is registered as
  // a service too, and both end with the server.
  auto health = std::make_unique<HealthService>(std::vector<std::string>{kServiceName});
  b.RegisterService(health.get());
  b.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(std::move(health)));
  const std::string address =
      (opts_.host.find(':') != std::string::npos ? "[" + opts_.host + "]" : opts_.host) + ":" +
      std::to_string(opts_.port);
  b.AddListeningPort(address, make_server_credentials(opts_), &port_);
  b.RegisterService(service_.get());
  b.SetMaxReceiveMessageSize(opts_.max_receive_message_bytes);
  b.SetMaxSendMessageSize(opts_.max_send_message_bytes);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, opts_.keepalive_time_s * 1000);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, opts_.keepalive_timeout_s * 1000);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Clients may keep idle connections alive with pings, but not more often than
  // every 10 s (gRPC's default would close them after two pings in 5 minutes).
  b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // Linux SO_REUSEPORT would let a second server bind our port and silently
  // take half the connections; a taken port must be an error.
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Headers (metadata) of one call: at most --max-metadata-bytes. See
  // docs/service.md: over the limit only that call fails.
  b.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, opts_.max_metadata_bytes);
  server_ = b.BuildAndStart();
  if (!server_ || port_ == 0) {
    server_.reset();
    throw std::runtime_error("cannot listen on " + address + " (port in use or address not available)");
  }
  set_health(false);
  metrics_.expose(opts_.metrics_host, opts_.metrics_port, opts_.metrics_any_port);
  log_.event("listening",
             {{"address", opts_.host},
              {"port", int64_t{port_}},
              {"metrics_port", int64_t{metrics_.port()}},
              {"tls", std::string(opts_.tls_cert.empty() ? "off" : opts_.tls_client_ca.empty() ? "tls" : "mtls")},
              {"auth", std::string(auth_.enabled() ? "bearer" : "off")}});
}

v1::ModelInfo ChatradioServer::model_info(const std::string& dir) {
  v1::ModelInfo info;
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  info.set_name(p.filename().string());
  info.set_version(fingerprint(dir));
  return info;
}

void ChatradioServer::load_and_warm_up() {
  const auto t0 = SteadyClock::now();
  auto rt = std::make_unique<Runtime>(Runtime{model::Tokenizer::load(opts_.model_dir + "/tokenizer.model"),
                                              nullptr, nullptr, {}, 0});
  model::CpuBackendOptions bo;
  bo.n_kv_blocks = opts_.kv_blocks;
  bo.kv_block_size = opts_.kv_block_size;
  bo.kv_dtype = model::parse_kv_dtype(opts_.kv_dtype).value();  // options allow only valid names
  bo.n_threads = opts_.threads > 0 ? opts_.threads
                                   : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  model::LoadOptions lo;
  model::LoadStats load_stats;
  lo.stats = &load_stats;
  lo.weight_cache_dir = opts_.weight_cache_dir;
  // Ready first: after a miss the cache is written while the server serves.
  lo.write_cache_in_background = true;
  lo.on_cache_written = [this](const std::string& outcome, double seconds) {
    log_.event("weight_cache", {{"outcome", outcome}, {"seconds", seconds}});
  };
  if (opts_.quantize == "int4") {
    lo.format = model::WeightFormat::kInt4;
    lo.group_size = opts_.quantize_group_size;
  }
  int gpus = 0;
  BackendLoader load_cuda;  // empty without CUDA: choose_backend then says so for --backend cuda
#ifdef CHATRADIO_WITH_CUDA
  gpus = model::CudaLlama::device_count();
  load_cuda = [&]() -> std::unique_ptr<model::Backend> {
    // The GPU always runs int4: CudaLlama quantizes float checkpoints at load.
    if (opts_.kv_dtype == "f32") {
      throw model::ModelError("--kv-dtype f32: the CUDA backend stores its KV cache in f16 only");
    }
    model::CudaBackendOptions co;
    co.n_kv_blocks = opts_.kv_blocks;
    co.kv_block_size = opts_.kv_block_size;
    co.max_tokens = std::max(co.max_tokens, opts_.token_budget);
    co.max_seqs = std::max(co.max_seqs, opts_.max_batch_size);
    return model::CudaLlama::load(opts_.model_dir, co,
                                  model::LoadOptions{model::WeightFormat::kInt4, opts_.quantize_group_size});
  };
#endif
  ChosenBackend chosen = choose_backend(opts_.backend, gpus, load_cuda, [&]() -> std::unique_ptr<model::Backend> {
    return model::CpuLlama::load(opts_.model_dir, bo, lo);
  });
  if (!chosen.fallback_reason.empty()) {
    log_.event("backend_fallback", {{"backend", chosen.name}, {"reason", chosen.fallback_reason}});
  }
  rt->backend = std::move(chosen.backend);
  const std::string backend_name = chosen.name;
  if (hooks_.wrap_backend) rt->backend = hooks_.wrap_backend(std::move(rt->backend));
  const model::LlamaConfig& cfg = rt->backend->config();
  if (rt->tokenizer.vocab_size() > cfg.vocab_size) {
    throw model::ModelError(opts_.model_dir + ": tokenizer.model has " + std::to_string(rt->tokenizer.vocab_size()) +
                            " pieces but the model only " + std::to_string(cfg.vocab_size));
  }
  rt->context = cfg.max_position_embeddings;
  rt->info = model_info(opts_.model_dir);
  rt->info.set_backend(backend_name);
  rt->info.set_weights(weights_name(opts_.model_dir, opts_.quantize, opts_.quantize_group_size));
  rt->engine = std::make_unique<engine::Engine>(
      *rt->backend,
      engine::EngineOptions{opts_.token_budget, opts_.max_batch_size, opts_.max_waiting, opts_.routine_aging_s});
  const double load_s = std::chrono::duration<double>(SteadyClock::now() - t0).count();

  // Warm-up: one real greedy generation through a real template, so the first
  // client does not pay for first-touch page faults and the engine has proven
  // it can run a step before health says SERVING.
  engine::GenerateParams g;
  const prompt::Selection sel = templates_.select(std::nullopt, prompt::Language::kEn, std::nullopt);
  if (sel) {
    g.prompt = prompt::encode_prompt(
        rt->tokenizer, prompt::render(*sel.tmpl, prompt::RenderInput{"No acute abnormality.", {}, {}}));
  }
  if (g.prompt.empty() || static_cast<int64_t>(g.prompt.size()) + opts_.warmup_tokens > rt->context) {
    g.prompt = {cfg.bos_token_id};
  }
  g.max_new_tokens = std::min(opts_.warmup_tokens, rt->context - static_cast<int>(g.prompt.size()));
  const engine::Outcome o = rt->engine->generate(std::move(g))->wait();
  if (o.status != engine::Status::kOk) throw std::runtime_error("warm-up generation failed: " + o.error);
  const double warm_s = std::chrono::duration<double>(SteadyClock::now() - t0).count() - load_s;

  runtime_ = std::move(rt);
  metrics_.set_engine(runtime_->engine.get());
  metrics_.set_model_loaded(true);
  service_->set_runtime(runtime_.get());
  ready_ = true;
  {
    // A drain that began while loading wins: never flip back to SERVING.
    std::lock_guard<std::mutex> lock(drain_mu_);
    if (!draining_) set_health(true);
  }
  log_.event("ready", {{"model", runtime_->info.name()},
                       {"version", runtime_->info.version()},
                       {"weights", runtime_->info.weights()},
                       {"backend", runtime_->info.backend()},
                       {"kv_dtype", runtime_->info.backend() == "cuda" ? std::string("f16") : opts_.kv_dtype},
                       {"context", int64_t{runtime_->context}},
                       {"load_s", load_s},
                       {"weight_cache", load_stats.cache},
                       {"warmup_s", warm_s}});
}

void ChatradioServer::set_health(bool serving) {
  if (!server_) return;
  grpc::HealthCheckServiceInterface* h = server_->GetHealthCheckService();
  if (h == nullptr) return;
  h->SetServingStatus("", serving);
  h->SetServingStatus(kServiceName, serving);
}

void ChatradioServer::drain() {
  std::unique_lock<std::mutex> lock(drain_mu_);
  if (!server_) return;
  if (draining_) {  // another thread drains: wait for it to finish
    drain_cv_.wait(lock, [&] { return drained_; });
    return;
  }
  draining_ = true;
  service_->set_draining();
  set_health(false);
  lock.unlock();
  log_.event("draining", {{"grace_s", opts_.drain_grace_s}, {"timeout_s", opts_.drain_timeout_s}});
  const auto t0 = SteadyClock::now();
  // Load balancers watching health stop sending here; calls still get an answer.
  if (opts_.drain_grace_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(opts_.drain_grace_s));
  // Health watchers are told NOT_SERVING and their streams end, so they do not
  // hold the drain until its deadline.
  if (grpc::HealthCheckServiceInterface* h = server_->GetHealthCheckService()) h->Shutdown();
  // Admitted requests get until the deadline; what is left then is stopped by
  // the service itself with UNAVAILABLE, so the log and the metrics carry the
  // status its client gets. Meanwhile the server still takes calls: late
  // callers get a logged UNAVAILABLE and health checks an answer, where a
  // server that stopped accepting would leave them to gRPC (CANCELLED, or
  // nothing until their deadline).
  const auto deadline = t0 + std::chrono::duration_cast<SteadyClock::duration>(
                                 std::chrono::duration<double>(opts_.drain_grace_s + opts_.drain_timeout_s));
  if (!service_->wait_idle(deadline)) {
    service_->abort_in_flight();
    service_->wait_idle(SteadyClock::now() + kAbortWait);
  }
  // Only refusals being written (and streams that are not ours, such as
  // reflection) are left: they get kShutdownGrace, then gRPC cancels them.
  server_->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  server_->Wait();
  // The exposer's threads end here, not after the "exit" line.
  metrics_.stop_exposer();
  log_.event("drained", {{"seconds", std::chrono::duration<double>(SteadyClock::now() - t0).count()}});
  lock.lock();
  drained_ = true;
  drain_cv_.notify_all();
}

}  // namespace chatradio::service
