// Shared set-up for the service tests: an in-process ChatradioServer on
// stories260K bound to an ephemeral localhost port, a real gRPC channel to it,
// captured log lines, and a backend decorator that can slow steps down or
// force EOS so cancellation, deadlines, overload and the empty-output retry
// become observable with a model that generates thousands of tokens a second.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "chatradio/v1/impression_service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "model/backend.h"
#include "model/tokenizer.h"
#include "server/prompt/validate.h"
#include "server/service/server.h"
#include "tests/common/shared.h"

namespace chatradio::service::testing {

using ::chatradio::testing::shared_path;

inline std::string model_dir() { return shared_path("models/stories260K"); }
inline std::string test_templates() { return std::string(CHATRADIO_SOURCE_DIR) + "/tests/service/templates_test.json"; }

// Wraps the real backend: optional sleep per step, and a script of forced
// tokens: each logits row the engine asks for (one per step for a single
// generating sequence) takes the next scripted id by a huge margin. This makes
// the model "say" EOS first (empty output) or byte-fallback pieces of Chinese
// characters, which stories260K never produces on its own.
class ControlledBackend final : public model::Backend {
 public:
  explicit ControlledBackend(std::unique_ptr<model::Backend> inner) : inner_(std::move(inner)) {}
  const model::LlamaConfig& config() const override { return inner_->config(); }
  int n_kv_blocks() const override { return inner_->n_kv_blocks(); }
  int kv_block_size() const override { return inner_->kv_block_size(); }
  void copy_kv_block(int dst, int src) override { inner_->copy_kv_block(dst, src); }
  void forward(std::span<float> logits, const model::Batch& batch) override {
    const int ms = delay_ms.load();
    if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    if (fail_steps.load() > 0) {
      --fail_steps;
      throw std::runtime_error("injected failure");
    }
    inner_->forward(logits, batch);
    std::lock_guard<std::mutex> lock(mu_);
    const size_t vocab = static_cast<size_t>(config().vocab_size);
    for (size_t r = 0; r + vocab <= logits.size() && !forced_.empty(); r += vocab) {
      logits[r + static_cast<size_t>(forced_.front())] = 1e4f;
      forced_.erase(forced_.begin());
    }
  }
  void force(const std::vector<int32_t>& ids) {
    std::lock_guard<std::mutex> lock(mu_);
    forced_.insert(forced_.end(), ids.begin(), ids.end());
  }
  std::atomic<int> delay_ms{0};
  std::atomic<int> fail_steps{0};  // the next N steps throw, as a failing device would

 private:
  std::unique_ptr<model::Backend> inner_;
  std::mutex mu_;
  std::vector<int32_t> forced_;
};

inline ServerOptions test_options() {
  ServerOptions o;
  o.model_dir = model_dir();
  o.templates_path = test_templates();
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = 0;
  o.threads = 1;
  o.kv_blocks = 128;
  o.max_input_bytes = 2000;
  o.max_receive_message_bytes = 1 << 20;
  o.drain_timeout_s = 5;
  // Off unless a test is about it: outputs are compared with direct runs of
  // the model, which know nothing of the guard.
  o.repetition_guard = false;
  return o;
}

// A started server plus what the tests look at.
class TestServer {
 public:
  explicit TestServer(ServerOptions opts = test_options(), bool load = true) {
    ServerHooks hooks;
    hooks.wrap_backend = [this](std::unique_ptr<model::Backend> b) {
      auto c = std::make_unique<ControlledBackend>(std::move(b));
      backend_ = c.get();
      return std::unique_ptr<model::Backend>(std::move(c));
    };
    hooks.log_sink = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mu_);
      lines_.push_back(line);
    };
    server_ = std::make_unique<ChatradioServer>(std::move(opts), std::move(hooks));
    server_->start();
    if (load) server_->load_and_warm_up();
  }
  ChatradioServer& server() { return *server_; }
  ControlledBackend& backend() { return *backend_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(server_->port()); }

  std::shared_ptr<grpc::Channel> channel() {
    return grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
  }
  std::unique_ptr<v1::ImpressionService::Stub> stub() { return v1::ImpressionService::NewStub(channel()); }
  std::unique_ptr<grpc::health::v1::Health::Stub> health() { return grpc::health::v1::Health::NewStub(channel()); }

  std::vector<std::string> log_lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }
  // The request lines (event "request") for one rpc, in order.
  std::vector<std::string> request_lines(const std::string& rpc = "") {
    std::vector<std::string> out;
    for (const std::string& l : log_lines()) {
      if (l.find("\"event\":\"request\"") == std::string::npos) continue;
      if (!rpc.empty() && l.find("\"rpc\":\"" + rpc + "\"") == std::string::npos) continue;
      out.push_back(l);
    }
    return out;
  }
  // The request lines of `rpc` once there are at least `n`: handlers log as
  // they return, after the client saw the status. Fewer when 5 s pass first.
  std::vector<std::string> wait_request_lines(size_t n, const std::string& rpc = "") {
    std::vector<std::string> lines = request_lines(rpc);
    for (int i = 0; i < 2500 && lines.size() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      lines = request_lines(rpc);
    }
    return lines;
  }
  // Waits until the engine runs and queues nothing (cancelled requests gone).
  bool wait_engine_idle(std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      const engine::EngineStats s = server_->engine()->stats();
      if (s.n_running == 0 && s.n_waiting == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }

 private:
  // The log sink outlives the server, which logs while it shuts down.
  std::mutex mu_;
  std::vector<std::string> lines_;
  std::unique_ptr<ChatradioServer> server_;
  ControlledBackend* backend_ = nullptr;
};

inline v1::GenerateImpressionRequest request(const std::string& findings, int max_tokens = 24,
                                             v1::SamplingParams::Preset preset = v1::SamplingParams::PRESET_GREEDY) {
  v1::GenerateImpressionRequest r;
  r.set_findings(findings);
  r.mutable_sampling()->set_preset(preset);
  if (max_tokens > 0) r.mutable_sampling()->set_max_tokens(static_cast<uint32_t>(max_tokens));
  return r;
}

// `n` greedy 40-token GenerateImpression calls made at once; their statuses.
// With --max-batch-size 1 --max-waiting 1 and slowed steps, some are refused.
inline std::vector<grpc::Status> generate_at_once(TestServer& ts, int n) {
  std::vector<std::future<grpc::Status>> calls;
  for (int i = 0; i < n; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      grpc::ClientContext ctx;
      v1::GenerateImpressionResponse resp;
      return ts.stub()->GenerateImpression(&ctx, request("The lungs are clear.", 40), &resp);
    }));
  }
  std::vector<grpc::Status> out;
  for (std::future<grpc::Status>& c : calls) out.push_back(c.get());
  return out;
}

// The id of a vocabulary piece (e.g. "<0x0A>", "▁The"); a test failure and 0
// when the vocabulary lacks it.
inline int32_t piece_id(const model::Tokenizer& tok, std::string_view piece) {
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.piece(id) == piece) return id;
  }
  ADD_FAILURE() << "no piece " << piece;
  return 0;
}

// The server's prompt rendered outside the server, with the same templates and
// tokenizer, to compute the ids a request's prompt must have.
struct PromptReference {
  PromptReference()
      : tok(model::Tokenizer::load(model_dir() + "/tokenizer.model")),
        templates(prompt::TemplateSet::load(test_templates())) {}
  std::vector<int32_t> prompt_ids(const std::string& findings, const v1::ReportContext& ctx = {}) {
    PreparedPrompt pp;
    const grpc::Status s = prepare_prompt(pp, templates, tok, findings, ctx, prompt::FindingsLimits{});
    EXPECT_TRUE(s.ok()) << s.error_message();
    return pp.ids;
  }
  model::Tokenizer tok;
  prompt::TemplateSet templates;
};

// `n` tokens of a plain word, for ControlledBackend::force: no EOS can end
// the request early.
inline std::vector<int32_t> filler(int n) {
  const model::Tokenizer tok = model::Tokenizer::load(model_dir() + "/tokenizer.model");
  return std::vector<int32_t>(static_cast<size_t>(n), tok.encode("the").back());
}

inline grpc::health::v1::HealthCheckResponse::ServingStatus health_of(grpc::health::v1::Health::Stub& h,
                                                                      const std::string& service) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status s = h.Check(&ctx, req, &resp);
  if (!s.ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return resp.status();
}

// A fresh temporary folder, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "chatradio-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(file(name), std::ios::binary) << text;
    return file(name);
  }

 private:
  std::string path_;
};

}  // namespace chatradio::service::testing
