// Score's ROUGE modes through the real server: the default is rouge_chinese's
// scoring with jieba (HMM on), ROUGE_MODE_LIN keeps rouge-score's
// definitions, the response names the mode and segmenter used, and what the
// server cannot do is refused with a precise status. Expected numbers come
// from the rouge_chinese 1.0.3 package (../shared/oracles) and python3-jieba,
// printed once; tests/text compares thousands of pairs with them directly.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "server/text/rouge_chinese.h"
#include "server/text/segment.h"
#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

class ScoreRougeMode : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

bool have_jieba() {
  return std::filesystem::exists(text::JiebaDict::kDebianPath) &&
         std::filesystem::exists(std::string(text::JiebaHmm::kDebianDir) + "/prob_emit.py");
}

ServerOptions with_jieba() {
  ServerOptions o = test_options();
  o.jieba_dict = text::JiebaDict::kDebianPath;
  return o;
}

struct Scored {
  grpc::Status status;
  v1::ScoreResponse resp;
};

Scored score(TestServer& ts, const std::string& findings, const std::string& cand, const std::string& ref,
             v1::RougeMode mode = v1::ROUGE_MODE_UNSPECIFIED,
             v1::ScoreRequest::Segmenter seg = v1::ScoreRequest::SEGMENTER_UNSPECIFIED) {
  v1::ScoreRequest req;
  req.set_findings(findings);
  req.set_candidate_impression(cand);
  req.set_reference_impression(ref);
  req.set_rouge_mode(mode);
  req.set_rouge_segmenter(seg);
  grpc::ClientContext ctx;
  Scored out;
  out.status = ts.stub()->Score(&ctx, req, &out.resp);
  return out;
}

// P, R, F of ROUGE-1, -2, -L to the bit: the package's doubles, printed by repr().
void expect_scores(const v1::Rouge& r, const double (&want)[9]) {
  const double got[9] = {r.rouge1().precision(), r.rouge1().recall(), r.rouge1().f1(),
                         r.rouge2().precision(), r.rouge2().recall(), r.rouge2().f1(),
                         r.rouge_l().precision(), r.rouge_l().recall(), r.rouge_l().f1()};
  for (int k = 0; k < 9; ++k) EXPECT_EQ(got[k], want[k]) << "value " << k;
}

TEST_F(ScoreRougeMode, DefaultIsRougeChineseWithJieba) {
  if (!have_jieba()) GTEST_SKIP() << "python3-jieba (dict.txt and finalseg/) not installed";
  TestServer ts(with_jieba());
  // Rouge().get_scores(' '.join(jieba.cut(c)), ' '.join(jieba.cut(r)))[0] for
  // c = 右肺上叶炎性病变，考虑病毒性肺炎。 r = 右肺上叶炎性病变。 where the HMM
  // makes 上叶炎 and 性病变 words.
  const Scored zh = score(ts, "双肺纹理清晰。", "右肺上叶炎性病变，考虑病毒性肺炎。", "右肺上叶炎性病变。");
  ASSERT_TRUE(zh.status.ok()) << zh.status.error_message();
  EXPECT_EQ(zh.resp.rouge_mode(), v1::ROUGE_MODE_CHINESE_COMPAT);
  EXPECT_EQ(zh.resp.rouge_segmenter(), v1::ScoreRequest::SEGMENTER_JIEBA);
  expect_scores(zh.resp.rouge(), {0.5, 1.0, 0.6666666622222223, 0.2857142857142857, 0.6666666666666666, 0.3999999958,
                                  0.5, 1.0, 0.6666666622222223});
  // English goes through jieba too, as ' '.join(jieba.cut(text)) does.
  const Scored en = score(ts, "Clear lungs.", "The lungs are clear. No effusion.", "Lungs clear, no effusion.");
  ASSERT_TRUE(en.status.ok()) << en.status.error_message();
  EXPECT_EQ(en.resp.rouge_segmenter(), v1::ScoreRequest::SEGMENTER_JIEBA);
  expect_scores(en.resp.rouge(), {0.42857142857142855, 0.5, 0.4615384565680473, 0.14285714285714285, 0.2,
                                  0.1666666618055557, 0.375, 0.5, 0.4285714236734694});
  // Asking for the mode by name is the same.
  const Scored named = score(ts, "双肺纹理清晰。", "右肺上叶炎性病变，考虑病毒性肺炎。", "右肺上叶炎性病变。",
                             v1::ROUGE_MODE_CHINESE_COMPAT);
  ASSERT_TRUE(named.status.ok());
  EXPECT_EQ(named.resp.rouge().rouge1().f1(), zh.resp.rouge().rouge1().f1());
}

TEST_F(ScoreRougeMode, JiebaWithoutHmmIsAnOption) {
  if (!have_jieba()) GTEST_SKIP() << "python3-jieba (dict.txt and finalseg/) not installed";
  TestServer ts(with_jieba());
  // The same pair with jieba.cut(text, HMM=False): 上 叶 炎 stay apart.
  const Scored s = score(ts, "双肺纹理清晰。", "右肺上叶炎性病变，考虑病毒性肺炎。", "右肺上叶炎性病变。",
                         v1::ROUGE_MODE_UNSPECIFIED, v1::ScoreRequest::SEGMENTER_JIEBA_NO_HMM);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.resp.rouge_segmenter(), v1::ScoreRequest::SEGMENTER_JIEBA_NO_HMM);
  expect_scores(s.resp.rouge(),
                {0.6, 1.0, 0.7499999953125, 0.4444444444444444, 0.8, 0.5714285668367348, 0.6, 1.0, 0.7499999953125});
}

TEST_F(ScoreRougeMode, LinModeKeepsRougeScoreDefinitions) {
  TestServer ts;  // no jieba needed
  // Characters for Chinese: 双肺纹理清晰 vs 双肺清晰, unigrams 4/6 and 4/4,
  // bigrams {双肺, 清晰} of 5 and of 3, LCS 双肺清晰; F = 2PR/(P+R).
  const Scored zh = score(ts, "双肺纹理清晰。", "双肺纹理清晰", "双肺清晰", v1::ROUGE_MODE_LIN);
  ASSERT_TRUE(zh.status.ok()) << zh.status.error_message();
  EXPECT_EQ(zh.resp.rouge_mode(), v1::ROUGE_MODE_LIN);
  EXPECT_EQ(zh.resp.rouge_segmenter(), v1::ScoreRequest::SEGMENTER_CHAR);
  EXPECT_DOUBLE_EQ(zh.resp.rouge().rouge1().f1(), 0.8);
  EXPECT_DOUBLE_EQ(zh.resp.rouge().rouge2().precision(), 2.0 / 5);
  EXPECT_DOUBLE_EQ(zh.resp.rouge().rouge_l().recall(), 1.0);
  // rouge-score's tokenizer for English: 5 of 6 words, the repeated "the" clipped.
  const Scored en = score(ts, "Clear lungs.", "The cat sat on the mat.", "the cat lay on the mat", v1::ROUGE_MODE_LIN);
  ASSERT_TRUE(en.status.ok()) << en.status.error_message();
  EXPECT_EQ(en.resp.rouge_segmenter(), v1::ScoreRequest::SEGMENTER_ENGLISH);
  EXPECT_DOUBLE_EQ(en.resp.rouge().rouge1().f1(), 5.0 / 6);
  EXPECT_DOUBLE_EQ(en.resp.rouge().rouge2().f1(), 3.0 / 5);
}

TEST_F(ScoreRougeMode, DefaultModeNeedsJiebaOrAnotherSegmenter) {
  TestServer ts;  // no --jieba-dict
  const Scored s = score(ts, "双肺纹理清晰。", "双肺纹理增粗", "双肺纹理清晰");
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.status.error_message().find("jieba"), std::string::npos) << s.status.error_message();
  EXPECT_NE(s.status.error_message().find("ROUGE_MODE_LIN"), std::string::npos) << s.status.error_message();
  // rouge_chinese's scoring over characters needs no dictionary: 双 肺 纹 理
  // of 增 粗 / 清 晰, distinct unigrams 4 of 6 each way.
  const Scored c = score(ts, "双肺纹理清晰。", "双肺纹理增粗", "双肺纹理清晰", v1::ROUGE_MODE_CHINESE_COMPAT,
                         v1::ScoreRequest::SEGMENTER_CHAR);
  ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_EQ(c.resp.rouge_mode(), v1::ROUGE_MODE_CHINESE_COMPAT);
  EXPECT_EQ(c.resp.rouge_segmenter(), v1::ScoreRequest::SEGMENTER_CHAR);
  const text::RougeScores want = text::rouge_chinese("双肺纹理增粗", "双肺纹理清晰", text::CharSegmenter());
  EXPECT_EQ(c.resp.rouge().rouge1().precision(), 4.0 / 6);
  EXPECT_EQ(c.resp.rouge().rouge1().f1(), want.rouge1.f1);
  EXPECT_EQ(c.resp.rouge().rouge_l().f1(), want.rougeL.f1);
}

TEST_F(ScoreRougeMode, BadModeSegmenterOrReferenceIsRefused) {
  TestServer ts;
  const Scored mode = score(ts, "Clear lungs.", "clear", "clear", static_cast<v1::RougeMode>(7));
  EXPECT_EQ(mode.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(mode.status.error_message().find("rouge_mode 7"), std::string::npos) << mode.status.error_message();
  const Scored seg = score(ts, "Clear lungs.", "clear", "clear", v1::ROUGE_MODE_LIN,
                           static_cast<v1::ScoreRequest::Segmenter>(9));
  EXPECT_EQ(seg.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(seg.status.error_message().find("rouge_segmenter 9"), std::string::npos) << seg.status.error_message();
  // rouge_chinese raises on a reference without words; the service says so.
  const Scored blank = score(ts, "Clear lungs.", "clear", "  ", v1::ROUGE_MODE_CHINESE_COMPAT,
                             v1::ScoreRequest::SEGMENTER_ENGLISH);
  EXPECT_EQ(blank.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(blank.status.error_message().find("reference"), std::string::npos) << blank.status.error_message();
  // Without a reference there is no ROUGE, and no mode to report.
  const Scored none = score(ts, "Clear lungs.", "clear", "");
  ASSERT_TRUE(none.status.ok()) << none.status.error_message();
  EXPECT_FALSE(none.resp.has_rouge());
  EXPECT_EQ(none.resp.rouge_mode(), v1::ROUGE_MODE_UNSPECIFIED);
}

}  // namespace
}  // namespace chatradio::service::testing
