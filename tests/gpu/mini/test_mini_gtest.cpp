// Self-test of tests/gpu/mini_gtest.h, the GoogleTest stand-in the device
// check builds when GTest is absent: a check evaluates its operands exactly
// once (also on failure), an `else` after a check belongs to the caller's `if`
// (built with -Werror=dangling-else), ASSERT_ returns, `<<` text is recorded,
// and GTEST_SKIP() skips. Host-only, no CUDA; registered with CTest.
#include <cstdio>
#include <string>

#include "tests/gpu/mini_gtest.h"

namespace {

int failures = 0;
void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}
// Takes and clears the runner's per-test state.
testing::mini::State take() {
  testing::mini::State s = testing::mini::state();
  testing::mini::state() = {};
  return s;
}

int calls = 0;
int counted(int v) {
  ++calls;
  return v;
}

void failing_expects() {
  EXPECT_EQ(counted(1), counted(2)) << "extra text";
  EXPECT_NEAR(counted(1), counted(5), 0.5);
  EXPECT_TRUE(counted(0) == 1);
}
void passing_expects() {
  EXPECT_EQ(counted(3), counted(3));
  EXPECT_LT(counted(1), counted(2));
  EXPECT_NEAR(counted(1), counted(1), 0.0);
}
void failing_assert(bool* after) {
  ASSERT_GE(counted(1), counted(2)) << "fatal";
  *after = true;
}
// With a bare `if`, and with an `else` of the caller's own.
void in_if_else(bool flag, bool* else_taken) {
  if (flag)
    EXPECT_TRUE(counted(0) != 0);
  else
    *else_taken = true;
  if (flag) EXPECT_EQ(counted(1), counted(1));
}
void skipping(bool* after) {
  GTEST_SKIP() << "why";
  *after = true;
}

}  // namespace

int main() {
  take();
  calls = 0;
  failing_expects();
  testing::mini::State s = take();
  require(calls == 5, "failing checks evaluate each operand once");
  require(s.failed && !s.skipped, "failing checks are recorded");
  require(s.messages.find("counted(1) == counted(2)") != std::string::npos, "the expression is in the message");
  require(s.messages.find("got 1 vs 2") != std::string::npos, "the values are in the message");
  require(s.messages.find("extra text") != std::string::npos, "<< text is in the message");

  calls = 0;
  passing_expects();
  s = take();
  require(calls == 6 && !s.failed && s.messages.empty(), "passing checks evaluate once and record nothing");

  calls = 0;
  bool after = false;
  failing_assert(&after);
  s = take();
  require(calls == 2 && s.failed && !after, "a failing ASSERT evaluates once, records and returns");
  require(s.messages.find("fatal") != std::string::npos, "ASSERT << text is in the message");

  bool else_taken = false;
  in_if_else(false, &else_taken);
  s = take();
  require(else_taken && !s.failed, "an else after a check belongs to the caller's if");
  else_taken = false;
  in_if_else(true, &else_taken);
  s = take();
  require(!else_taken && s.failed, "the check inside the caller's if runs");

  after = false;
  skipping(&after);
  s = take();
  require(s.skipped && !s.failed && !after && s.messages.find("why") != std::string::npos, "GTEST_SKIP skips");

  std::printf("mini_gtest self-test: %s\n", failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
