// The Prometheus exposer scraped over HTTP after real requests: every metric
// of docs/service.md is there with sensible values, no report text is, and the
// exposition passes a lint of Prometheus' naming and format rules (and
// `promtool check metrics` when promtool is installed).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

// GET http://127.0.0.1:port/path; returns the body ("" on failure).
std::string http_get(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  const size_t body = out.find("\r\n\r\n");
  if (out.rfind("HTTP/1.", 0) != 0 || out.find(" 200 ") == std::string::npos || body == std::string::npos) return "";
  return out.substr(body + 4);
}

// The exposition-format and naming rules promtool checks (and a few more),
// for machines without promtool. Returns one message per problem.
std::vector<std::string> lint(const std::string& text) {
  std::vector<std::string> problems;
  const std::regex name_re("[a-zA-Z_:][a-zA-Z0-9_:]*");
  const std::regex sample_re(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+))");
  const std::regex label_re(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)")re");
  std::map<std::string, std::string> type_of;  // family -> type
  std::set<std::string> help_seen, series_seen;
  std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // series w/o le -> (le, count)
  std::map<std::string, double> counts;
  std::istringstream in(text);
  std::string line;
  const auto family_of = [&](const std::string& sample) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (sample.size() > s.size() && sample.compare(sample.size() - s.size(), s.size(), s) == 0) {
        const std::string base = sample.substr(0, sample.size() - s.size());
        if (type_of.count(base) && (type_of[base] == "histogram" || type_of[base] == "summary")) return base;
      }
    }
    return sample;
  };
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0) {
      std::istringstream l(line.substr(7));
      std::string name, help;
      l >> name;
      std::getline(l, help);
      if (!std::regex_match(name, name_re)) problems.push_back("bad metric name " + name);
      if (help.size() < 2) problems.push_back(name + ": empty HELP");
      if (!help_seen.insert(name).second) problems.push_back(name + ": HELP twice");
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream l(line.substr(7));
      std::string name, type;
      l >> name >> type;
      if (type_of.count(name)) problems.push_back(name + ": TYPE twice");
      type_of[name] = type;
      if (type == "counter" && name.size() > 6 && name.compare(name.size() - 6, 6, "_total") != 0) {
        problems.push_back(name + ": counter names end in _total");
      }
      if (type != "counter" && name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0) {
        problems.push_back(name + ": only counters end in _total");
      }
      if (type == "histogram" && name.find("_seconds") == std::string::npos) {
        problems.push_back(name + ": histograms here measure time in base units (_seconds)");
      }
      for (const char* bad : {"_milliseconds", "_ms", "_bytes_total_total"}) {
        if (name.find(bad) != std::string::npos) problems.push_back(name + ": non-base unit " + bad);
      }
      // Ours carry the chatradio_ prefix; prometheus-cpp's exposer adds its own
      // exposer_* self-metrics.
      if (name.rfind("chatradio_", 0) != 0 && name.rfind("exposer_", 0) != 0) {
        problems.push_back(name + ": missing the chatradio_ prefix");
      }
      continue;
    }
    if (line[0] == '#') continue;
    std::smatch m;
    if (!std::regex_match(line, m, sample_re)) {
      problems.push_back("unparsable sample line: " + line);
      continue;
    }
    const std::string sample = m[1], labels = m[3], value = m[4];
    const std::string fam = family_of(sample);
    if (!type_of.count(fam)) problems.push_back(sample + ": sample before its TYPE");
    if (!help_seen.count(fam)) problems.push_back(sample + ": no HELP");
    if (!series_seen.insert(sample + "{" + labels + "}").second) problems.push_back("duplicate series " + line);
    char* end = nullptr;
    const double v = value == "+Inf" ? INFINITY : std::strtod(value.c_str(), &end);
    if (value != "+Inf" && (end == nullptr || *end != '\0')) problems.push_back("bad value in " + line);
    if (type_of[fam] == "counter" && v < 0) problems.push_back("negative counter " + line);
    std::string rest = labels, without_le;
    double le = NAN;
    for (std::smatch lm; std::regex_search(rest, lm, label_re); rest = lm.suffix()) {
      if (lm[1] == "le") le = lm[2] == "+Inf" ? INFINITY : std::stod(lm[2]);
      else without_le += lm[1].str() + "=" + lm[2].str() + ",";
      if (lm[1].str().rfind("__", 0) == 0) problems.push_back("reserved label name in " + line);
    }
    if (sample == fam + "_bucket") {
      if (std::isnan(le)) problems.push_back("bucket without le: " + line);
      buckets[fam + "{" + without_le + "}"].push_back({le, v});
    }
    if (sample == fam + "_count" && type_of[fam] == "histogram") counts[fam + "{" + without_le + "}"] = v;
  }
  for (const auto& [series, bs] : buckets) {
    for (size_t i = 1; i < bs.size(); ++i) {
      if (!(bs[i].first > bs[i - 1].first)) problems.push_back(series + ": le not increasing");
      if (bs[i].second < bs[i - 1].second) problems.push_back(series + ": bucket counts not cumulative");
    }
    if (bs.empty() || !std::isinf(bs.back().first)) problems.push_back(series + ": no +Inf bucket");
    else if (!counts.count(series) || counts[series] != bs.back().second) problems.push_back(series + ": +Inf != _count");
  }
  return problems;
}

double value_of(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return NAN;
}

class ServiceMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

TEST_F(ServiceMetricsTest, ScrapedOverHttpWithEveryMetricAndNoReportText) {
  ServerOptions o = test_options();
  o.metrics_any_port = true;
  o.metrics_host = "127.0.0.1";
  TestServer ts(o);
  ASSERT_GT(ts.server().metrics_port(), 0);
  const std::string secret_findings = "Zebrafindings in the left lower lobe.";
  uint32_t generated = 0;
  {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    auto r = request(secret_findings, 20);
    r.mutable_context()->set_institution_id("inst-1");
    ASSERT_TRUE(ts.stub()->GenerateImpression(&ctx, r, &resp).ok());
    generated += resp.tokens().generated_tokens();
  }
  {
    grpc::ClientContext ctx;
    auto reader = ts.stub()->StreamImpression(&ctx, request(secret_findings, 20));
    v1::StreamImpressionResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_final()) generated += msg.final().tokens().generated_tokens();
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  {
    grpc::ClientContext ctx;
    v1::ScoreRequest r;
    r.set_findings(secret_findings);
    r.set_candidate_impression("Quaggaimpression noted.");
    r.set_reference_impression("Okapireference noted.");
    r.set_rouge_mode(v1::ROUGE_MODE_LIN);  // the default mode needs jieba, which this test is not about
    v1::ScoreResponse resp;
    const grpc::Status s = ts.stub()->Score(&ctx, r, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::GenerateImpressionResponse resp;
    EXPECT_FALSE(ts.stub()->GenerateImpression(&ctx, request(""), &resp).ok());
  }
  const std::string text = http_get(ts.server().metrics_port(), "/metrics");
  ASSERT_FALSE(text.empty()) << "no answer from the exposer on port " << ts.server().metrics_port();
  for (const char* name :
       {"chatradio_time_to_first_token_seconds", "chatradio_time_per_output_token_seconds",
        "chatradio_request_duration_seconds", "chatradio_queue_time_seconds", "chatradio_requests_total",
        "chatradio_prompt_tokens_total", "chatradio_generated_tokens_total", "chatradio_prefix_cache_hits_total",
        "chatradio_prefix_cache_misses_total", "chatradio_preemptions_total", "chatradio_guard_triggers_total",
        "chatradio_requests_running", "chatradio_requests_waiting", "chatradio_kv_cache_usage_ratio",
        "chatradio_model_loaded"}) {
    EXPECT_NE(text.find("# TYPE " + std::string(name) + " "), std::string::npos) << name;
  }
  for (const char* secret : {"Zebrafindings", "Quaggaimpression", "Okapireference", "inst-1", "lobe"}) {
    EXPECT_EQ(text.find(secret), std::string::npos) << secret << " leaked into the metrics";
  }
  EXPECT_EQ(value_of(text, "chatradio_requests_total{code=\"OK\",rpc=\"GenerateImpression\"}"), 1);
  EXPECT_EQ(value_of(text, "chatradio_requests_total{code=\"OK\",rpc=\"StreamImpression\"}"), 1);
  EXPECT_EQ(value_of(text, "chatradio_requests_total{code=\"OK\",rpc=\"Score\"}"), 1);
  EXPECT_EQ(value_of(text, "chatradio_requests_total{code=\"INVALID_ARGUMENT\",rpc=\"GenerateImpression\"}"), 1);
  EXPECT_EQ(value_of(text, "chatradio_request_duration_seconds_count{rpc=\"GenerateImpression\"}"), 2);
  EXPECT_EQ(value_of(text, "chatradio_time_to_first_token_seconds_count{rpc=\"StreamImpression\"}"), 1);
  EXPECT_EQ(value_of(text, "chatradio_queue_time_seconds_count{rpc=\"Score\"}"), 1);
  EXPECT_EQ(value_of(text, "chatradio_generated_tokens_total"), generated);
  EXPECT_GT(value_of(text, "chatradio_prompt_tokens_total"), 30);
  // The same findings three times over one template: the prefix cache hit.
  EXPECT_GT(value_of(text, "chatradio_prefix_cache_hits_total"), 0);
  EXPECT_EQ(value_of(text, "chatradio_requests_running"), 0);
  EXPECT_EQ(value_of(text, "chatradio_model_loaded"), 1);
  const double kv = value_of(text, "chatradio_kv_cache_usage_ratio");
  EXPECT_GE(kv, 0.0);
  EXPECT_LE(kv, 1.0);

  const std::vector<std::string> problems = lint(text);
  for (const std::string& p : problems) ADD_FAILURE() << p;

  // promtool, when installed, must agree.
  if (std::system("command -v promtool >/dev/null 2>&1") == 0) {
    TempDir dir;
    const std::string f = dir.write("metrics.txt", text);
    const std::string out = dir.file("promtool.out");
    const int rc = std::system(("promtool check metrics < '" + f + "' > '" + out + "' 2>&1").c_str());
    std::ifstream in(out);
    std::stringstream ss;
    ss << in.rdbuf();
    EXPECT_EQ(rc, 0) << ss.str();
    EXPECT_EQ(ss.str(), "") << "promtool complaints";
  }
}

TEST(ServiceMetricsLint, CatchesWhatItShould) {
  EXPECT_TRUE(lint("# HELP chatradio_x_total Things.\n# TYPE chatradio_x_total counter\nchatradio_x_total 1\n").empty());
  EXPECT_FALSE(lint("# HELP chatradio_x Things.\n# TYPE chatradio_x counter\nchatradio_x 1\n").empty());
  EXPECT_FALSE(lint("# TYPE chatradio_x_total counter\nchatradio_x_total 1\n").empty()) << "no HELP";
  EXPECT_FALSE(lint("# HELP chatradio_g_total G.\n# TYPE chatradio_g_total gauge\nchatradio_g_total 1\n").empty());
  EXPECT_FALSE(lint("# HELP chatradio_h_seconds H.\n# TYPE chatradio_h_seconds histogram\n"
                    "chatradio_h_seconds_bucket{le=\"1\"} 2\nchatradio_h_seconds_bucket{le=\"+Inf\"} 1\n"
                    "chatradio_h_seconds_sum 1\nchatradio_h_seconds_count 1\n")
                   .empty())
      << "bucket counts not cumulative";
}

}  // namespace
}  // namespace chatradio::service::testing
