// The CPU forward pass against llama2.c's own greedy output on the real
// stories260K model, plus batch-shape invariances of the paged forward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <numeric>
#include <sstream>
#include <string>

#include "model/generate.h"
#include "model/llama.h"
#include "model/errors.h"
#include "tests/common/shared.h"

namespace chatradio::model {
namespace {

using ::chatradio::testing::shared_path;

std::vector<int32_t> read_ids(const std::string& path) {
  std::ifstream f(path);
  return {std::istream_iterator<int32_t>(f), std::istream_iterator<int32_t>()};
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

class Stories : public ::testing::TestWithParam<const char*> {};

TEST_P(Stories, GreedyFromBosMatchesLlama2c) {
  const std::string rel = std::string("models/") + GetParam();
  CHATRADIO_REQUIRE_SHARED(rel);
  const std::vector<int32_t> expected = read_ids(shared_path("models/stories260K/expected_greedy_bos_200.ids"));
  ASSERT_EQ(expected.size(), 201u);
  // A half KV cache rounds K/V to ~3 digits; on this model greedy decoding
  // still follows the float reference token for token.
  for (KvDtype kv : {KvDtype::kF32, KvDtype::kF16}) {
    CpuBackendOptions opts;
    opts.kv_dtype = kv;
    auto llama = CpuLlama::load(shared_path(rel), opts);
    const std::vector<int32_t> prompt{1};
    const GenerateResult r = generate_one(*llama, prompt, 200, SamplingParams{});
    std::vector<int32_t> got{1};
    got.insert(got.end(), r.tokens.begin(), r.tokens.end());
    EXPECT_EQ(got, expected) << kv_dtype_name(kv) << " KV cache";
  }
}

INSTANTIATE_TEST_SUITE_P(F32AndF16, Stories, ::testing::Values("stories260K", "stories260K-f16"));

TEST(CliGenerate, PrintsExactlyTheReferenceTextAndIds) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  const std::string bin = std::string(CHATRADIO_BINARY_DIR) + "/server/chatradio";
  const std::string model = shared_path("models/stories260K");
  auto run = [](const std::string& cmd) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
  };
  EXPECT_EQ(run(bin + " generate --model " + model + " --prompt '' --max-tokens 200"),
            read_file(shared_path("models/stories260K/expected_greedy_bos_200.txt")));
  EXPECT_EQ(run(bin + " generate --model " + model + " --prompt '' --max-tokens 200 --ids"),
            read_file(shared_path("models/stories260K/expected_greedy_bos_200.ids")));
  EXPECT_EQ(run(bin + " generate --model " + model + " --prompt '' --max-tokens 200 --ids --kv-dtype f32"),
            read_file(shared_path("models/stories260K/expected_greedy_bos_200.ids")));
  EXPECT_EQ(WEXITSTATUS(system((bin + " generate --model " + model + " --prompt x --kv-dtype f8 2>/dev/null").c_str())), 2);
  // Usage errors exit 2 with a message, not a crash.
  EXPECT_EQ(WEXITSTATUS(system((bin + " generate --model " + model + " --prompt x --top-p 0 2>/dev/null").c_str())), 2);
  EXPECT_EQ(WEXITSTATUS(system((bin + " generate --model /nonexistent --prompt x 2>/dev/null").c_str())), 1);
}

// Batched, chunked and paged execution must give the same logits as running
// each sequence alone in one piece: that is what lets the engine mix requests.
class ForwardShapes : public ::testing::Test {
 protected:
  void SetUp() override {
    CHATRADIO_REQUIRE_SHARED("models/stories260K");
    llama_ = CpuLlama::load(shared_path("models/stories260K"), {64, 16});
  }
  std::vector<float> run(const Batch& b) {
    std::vector<float> logits(static_cast<size_t>(b.n_logit_rows()) * 512);
    llama_->forward(logits, b);
    return logits;
  }
  std::unique_ptr<CpuLlama> llama_;
};

std::vector<int32_t> some_tokens(int n, int salt) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = 3 + (i * 37 + salt * 101) % 500;
  t[0] = 1;
  return t;
}

TEST_F(ForwardShapes, ChunkedPrefillEqualsOneShot) {
  const auto toks = some_tokens(40, 1);
  Batch whole{{SeqSlice{toks, 0, {0, 1, 2}, true}}};
  const auto ref = run(whole);
  // Same tokens in chunks of 16, 7 and 17 in other blocks, in a shuffled order.
  std::vector<int32_t> blocks{9, 4, 30};
  std::vector<float> got;
  int pos = 0;
  for (int chunk : {16, 7, 17}) {
    Batch b{{SeqSlice{std::vector<int32_t>(toks.begin() + pos, toks.begin() + pos + chunk), pos, blocks, true}}};
    const auto part = run(b);
    got.insert(got.end(), part.begin(), part.end());
    pos += chunk;
  }
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_FLOAT_EQ(got[i], ref[i]) << i;
}

TEST_F(ForwardShapes, BatchOfSequencesEqualsEachAlone) {
  const auto a = some_tokens(21, 2), b = some_tokens(5, 3), c = some_tokens(33, 4);
  const auto ra = run(Batch{{SeqSlice{a, 0, {0, 1}, false}}});
  const auto rb = run(Batch{{SeqSlice{b, 0, {2}, false}}});
  const auto rc = run(Batch{{SeqSlice{c, 0, {3, 4, 5}, false}}});
  const auto all = run(Batch{{SeqSlice{a, 0, {10, 11}, false}, SeqSlice{b, 0, {12}, false},
                              SeqSlice{c, 0, {13, 14, 15}, false}}});
  ASSERT_EQ(all.size(), 3u * 512);
  for (int i = 0; i < 512; ++i) {
    // The CPU kernels fix each row's summation order, so batching is bitwise invariant.
    ASSERT_EQ(all[i], ra[i]);
    ASSERT_EQ(all[512 + i], rb[i]);
    ASSERT_EQ(all[1024 + i], rc[i]);
  }
}

// copy_kv_block duplicates a block in every layer, for either cache dtype:
// continuing a sequence from the copy gives the logits of continuing from the
// original. A half cache stays close to a float one.
TEST(CpuKvCache, CopiedBlockContinuesLikeTheOriginalForBothDtypes) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  const auto toks = some_tokens(24, 5);
  const std::vector<int32_t> prefix(toks.begin(), toks.begin() + 16), next(toks.begin() + 16, toks.end());
  std::vector<std::vector<float>> per_dtype;
  for (KvDtype kv : {KvDtype::kF32, KvDtype::kF16}) {
    CpuBackendOptions opts{8, 16, 1, kv};
    auto llama = CpuLlama::load(shared_path("models/stories260K"), opts);
    std::vector<float> logits(512 * next.size()), from_copy(logits.size());
    llama->forward(std::span<float>(logits.data(), 512), Batch{{SeqSlice{prefix, 0, {2}, false}}});
    llama->forward(logits, Batch{{SeqSlice{next, 16, {2, 3}, true}}});
    llama->copy_kv_block(5, 2);
    llama->forward(from_copy, Batch{{SeqSlice{next, 16, {5, 6}, true}}});
    EXPECT_EQ(from_copy, logits) << kv_dtype_name(kv);
    per_dtype.push_back(logits);
  }
  float max_diff = 0;
  for (size_t i = 0; i < per_dtype[0].size(); ++i) {
    max_diff = std::max(max_diff, std::abs(per_dtype[0][i] - per_dtype[1][i]));
  }
  EXPECT_LT(max_diff, 0.05f) << "half KV cache strays from the float one";
  EXPECT_GT(max_diff, 0.0f) << "the half cache should actually round";
}

// A pool that cannot fit in this machine's memory is refused at load with the
// numbers, not left to the OOM killer once the engine has filled it.
TEST(CpuKvCache, PoolLargerThanMemoryIsRefusedWithTheNumbers) {
  CHATRADIO_REQUIRE_SHARED("models/stories260K");
  CpuBackendOptions opts;
  opts.n_kv_blocks = 2147483647;  // ~21 TB of f16 K/V for this model
  try {
    CpuLlama::load(shared_path("models/stories260K"), opts);
    ADD_FAILURE() << "no error";
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("KV cache of 2147483647 blocks x 16 tokens (f16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blocks fit"), std::string::npos) << msg;
  }
}

TEST_F(ForwardShapes, MalformedBatchIsRejectedWithAMessage) {
  std::vector<float> logits(512);
  auto expect_error = [&](const Batch& b, const std::string& needle) {
    try {
      llama_->forward(logits, b);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const ModelError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(Batch{{SeqSlice{{1, 600}, 0, {0}, false}}}, "outside the vocabulary");
  expect_error(Batch{{SeqSlice{some_tokens(17, 1), 0, {0}, false}}}, "needs 2 KV blocks");
  expect_error(Batch{{SeqSlice{{1}, 0, {64}, false}}}, "out of range");
  expect_error(Batch{{SeqSlice{{1}, 512, {0}, false}}}, "beyond the model's 512 positions");
  expect_error(Batch{}, "no sequences");
}

}  // namespace
}  // namespace chatradio::model
