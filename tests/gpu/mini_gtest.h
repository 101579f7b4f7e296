// A minimal stand-in for the part of GoogleTest that tests/gpu uses, for the
// stand-alone device build (bench/gpu/standalone) on machines without GTest.
// Supports TEST, TEST_F (SetUp/TearDown), EXPECT_/ASSERT_ {TRUE, FALSE, EQ, NE,
// LT, LE, GT, GE, NEAR} (each operand evaluated once, failure or not), GTEST_SKIP,
// SCOPED_TRACE-free messages via <<, and
// --gtest_filter (simplified, see matches()) / --gtest_output=json:PATH (a small JSON summary in
// its own format, not GoogleTest's). Exceptions fail the test.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace testing {

class Test {
 public:
  virtual ~Test() = default;
  virtual void SetUp() {}
  virtual void TearDown() {}
  virtual void TestBody() = 0;
};

namespace mini {

struct State {
  bool failed = false;
  bool skipped = false;
  std::string messages;
};
inline State& state() {
  static State s;  // the runner's per-test state (single-threaded runner)
  return s;
}

struct Registered {
  std::string suite, name;
  std::function<Test*()> make;
};
inline std::vector<Registered>& registry() {
  static std::vector<Registered> r;
  return r;
}
inline bool add(const char* suite, const char* name, std::function<Test*()> make) {
  registry().push_back({suite, name, std::move(make)});
  return true;
}

// Collects "<< extra" after a failed check, then records it.
class Message {
 public:
  Message(bool fatal_unused, const char* file, int line, std::string what) {
    (void)fatal_unused;
    os_ << file << ":" << line << ": " << what;
  }
  template <class T>
  Message& operator<<(const T& v) {
    os_ << v;
    return *this;
  }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};
struct Recorder {
  bool skip = false;
  void operator=(const Message& m) const {
    State& s = state();
    if (skip) {
      s.skipped = true;
      s.messages += "[skipped] " + m.str() + "\n";
    } else {
      s.failed = true;
      s.messages += m.str() + "\n";
    }
  }
};

// The outcome of one check, its operands evaluated exactly once (as in
// GoogleTest): the failure text is built from the values already computed.
struct Result {
  bool ok = true;
  std::string text;
};
inline Result bool_result(bool ok, const char* text) { return {ok, ok ? std::string() : std::string(text)}; }
template <class A, class B, class Op>
Result cmp_result(const char* ea, const char* eb, const char* op, const A& a, const B& b, Op pass) {
  if (pass(a, b)) return {};
  std::ostringstream os;
  os << "expected " << ea << " " << op << " " << eb << ", got " << a << " vs " << b << " ";
  return {false, os.str()};
}
inline Result near_result(const char* ea, const char* eb, double a, double b, double tol) {
  if (std::fabs(a - b) <= tol) return {};
  std::ostringstream os;
  os << "expected " << ea << " ~= " << eb << " within " << tol << ", got " << a << " vs " << b << " ";
  return {false, os.str()};
}

// GoogleTest-like filter, simplified: ':'-separated patterns, '*' removed, each
// pattern a substring of "Suite.Name"; empty matches everything.
inline bool matches(const std::string& full, const std::string& filter) {
  if (filter.empty()) return true;
  std::string pat;
  for (size_t i = 0; i <= filter.size(); ++i) {
    if (i == filter.size() || filter[i] == ':') {
      if (full.find(pat) != std::string::npos) return true;
      pat.clear();
    } else if (filter[i] != '*') {
      pat += filter[i];
    }
  }
  return false;
}

inline int run_all(int argc, char** argv) {
  std::string filter, json;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--gtest_filter=", 0) == 0) filter = a.substr(15);
    if (a.rfind("--gtest_output=json:", 0) == 0) json = a.substr(20);
  }
  int passed = 0, failed = 0, skipped = 0;
  std::ostringstream js;
  js << "{\"runner\": \"mini_gtest\", \"tests\": [";
  bool first = true;
  for (const Registered& r : registry()) {
    const std::string full = r.suite + "." + r.name;
    if (!matches(full, filter)) continue;
    state() = State{};
    std::printf("[ RUN      ] %s\n", full.c_str());
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      Test* t = r.make();
      t->SetUp();
      if (!state().skipped && !state().failed) t->TestBody();
      t->TearDown();
      delete t;
    } catch (const std::exception& e) {
      state().failed = true;
      state().messages += std::string("uncaught exception: ") + e.what() + "\n";
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const State& s = state();
    std::fputs(s.messages.c_str(), stdout);
    const char* verdict = s.failed ? "FAILED" : s.skipped ? "SKIPPED" : "OK";
    std::printf("[ %8s ] %s (%.0f ms)\n", verdict, full.c_str(), ms);
    (s.failed ? failed : s.skipped ? skipped : passed)++;
    std::string msg;
    for (char c : s.messages) {
      if (c == '"' || c == '\\') msg += '\\';
      if (c == '\n') msg += "\\n"; else if (static_cast<unsigned char>(c) >= 0x20) msg += c;
    }
    js << (first ? "" : ",") << "\n  {\"name\": \"" << full << "\", \"result\": \"" << verdict
       << "\", \"ms\": " << ms << ", \"messages\": \"" << msg << "\"}";
    first = false;
  }
  js << "\n], \"passed\": " << passed << ", \"failed\": " << failed << ", \"skipped\": " << skipped << "}\n";
  std::printf("[==========] %d passed, %d failed, %d skipped\n", passed, failed, skipped);
  if (!json.empty()) std::ofstream(json) << js.str();
  return failed == 0 ? 0 : 1;
}

}  // namespace mini
}  // namespace testing

#define MINI_TEST_CLASS_(suite, name) suite##_##name##_MiniTest
#define MINI_DEFINE_(suite, name, base)                                                                \
  class MINI_TEST_CLASS_(suite, name) : public base {                                                  \
   public:                                                                                             \
    void TestBody() override;                                                                          \
  };                                                                                                   \
  static const bool suite##_##name##_registered_ =                                                     \
      ::testing::mini::add(#suite, #name, [] { return new MINI_TEST_CLASS_(suite, name)(); });         \
  void MINI_TEST_CLASS_(suite, name)::TestBody()
#define TEST(suite, name) MINI_DEFINE_(suite, name, ::testing::Test)
#define TEST_F(fixture, name) MINI_DEFINE_(fixture, name, fixture)

// A check is a one-pass `for` over its failure, not an `if`/`else`: it holds
// no `else` that could pair with the caller's (`if (c) EXPECT_...(x); else ...`
// binds as written, without -Wdangling-else), and `<< extra` still binds to the
// Message before the assignment records it (as in GoogleTest).
#define MINI_EXPECT_(result)                                                                 \
  for (::testing::mini::Result mini_r_ = (result); !mini_r_.ok; mini_r_.ok = true)           \
  ::testing::mini::Recorder{} = ::testing::mini::Message(false, __FILE__, __LINE__, mini_r_.text)
#define MINI_FATAL_(result)                                                                  \
  for (::testing::mini::Result mini_r_ = (result); !mini_r_.ok; mini_r_.ok = true)           \
  return ::testing::mini::Recorder{} = ::testing::mini::Message(true, __FILE__, __LINE__, mini_r_.text)

#define MINI_CMP_(a, b, op, MAC)                                       \
  MAC(::testing::mini::cmp_result(#a, #b, #op, (a), (b),               \
                                  [](const auto& mini_x_, const auto& mini_y_) { return mini_x_ op mini_y_; }))
#define EXPECT_TRUE(c) MINI_EXPECT_(::testing::mini::bool_result(static_cast<bool>(c), "expected true: " #c " "))
#define EXPECT_FALSE(c) MINI_EXPECT_(::testing::mini::bool_result(!static_cast<bool>(c), "expected false: " #c " "))
#define EXPECT_EQ(a, b) MINI_CMP_(a, b, ==, MINI_EXPECT_)
#define EXPECT_NE(a, b) MINI_CMP_(a, b, !=, MINI_EXPECT_)
#define EXPECT_LT(a, b) MINI_CMP_(a, b, <, MINI_EXPECT_)
#define EXPECT_LE(a, b) MINI_CMP_(a, b, <=, MINI_EXPECT_)
#define EXPECT_GT(a, b) MINI_CMP_(a, b, >, MINI_EXPECT_)
#define EXPECT_GE(a, b) MINI_CMP_(a, b, >=, MINI_EXPECT_)
#define EXPECT_NEAR(a, b, tol) \
  MINI_EXPECT_(::testing::mini::near_result(#a, #b, double(a), double(b), double(tol)))
#define ASSERT_TRUE(c) MINI_FATAL_(::testing::mini::bool_result(static_cast<bool>(c), "expected true: " #c " "))
#define ASSERT_FALSE(c) MINI_FATAL_(::testing::mini::bool_result(!static_cast<bool>(c), "expected false: " #c " "))
#define ASSERT_EQ(a, b) MINI_CMP_(a, b, ==, MINI_FATAL_)
#define ASSERT_NE(a, b) MINI_CMP_(a, b, !=, MINI_FATAL_)
#define ASSERT_LT(a, b) MINI_CMP_(a, b, <, MINI_FATAL_)
#define ASSERT_LE(a, b) MINI_CMP_(a, b, <=, MINI_FATAL_)
#define ASSERT_GT(a, b) MINI_CMP_(a, b, >, MINI_FATAL_)
#define ASSERT_GE(a, b) MINI_CMP_(a, b, >=, MINI_FATAL_)
#define GTEST_SKIP() return ::testing::mini::Recorder{true} = ::testing::mini::Message(false, __FILE__, __LINE__, "")

#define CHATRADIO_MINI_GTEST_MAIN \
  int main(int argc, char** argv) { return ::testing::mini::run_all(argc, argv); }
