// The streaming safetensors writer and the sharding checkpoint writer.
#include <signal.h>
#include <sys/resource.h>

#include <filesystem>

#include "model/errors.h"
#include "tests/quantize/quantize_testing.h"

namespace chatradio::model {
namespace {

using qtest::TempDir;
using testing::as_bytes;
namespace fs = std::filesystem;

std::vector<uint8_t> iota_bytes(size_t n, int salt) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 + salt);
  return v;
}

TEST(SafetensorsWriter, StreamsSlicesAndMatchesTheInMemoryWriter) {
  TempDir dir;
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint8_t> ab = as_bytes(a), bb = iota_bytes(10, 3);
  {
    SafetensorsWriter w(dir / "s.safetensors",
                        {{"a", DType::F32, {2, 3}}, {"empty", DType::F16, {0, 4}}, {"b", DType::U8, {10}}},
                        {{"format", "pt"}});
    EXPECT_EQ(w.data_bytes(), 34u);
    EXPECT_TRUE(fs::exists(dir / "s.safetensors.tmp"));
    EXPECT_FALSE(fs::exists(dir / "s.safetensors"));
    // a in two slices; the zero-byte tensor needs no call.
    w.write("a", std::span(ab).first(10));
    w.write("a", std::span(ab).subspan(10));
    w.write("b", bb);
    EXPECT_EQ(w.bytes_written(), 34u);
    w.finish();
  }
  EXPECT_FALSE(fs::exists(dir / "s.safetensors.tmp"));
  write_safetensors(dir / "m.safetensors",
                    {{"a", DType::F32, {2, 3}, ab}, {"empty", DType::F16, {0, 4}, {}}, {"b", DType::U8, {10}, bb}},
                    {{"format", "pt"}});
  EXPECT_EQ(qtest::read_file(dir / "s.safetensors"), qtest::read_file(dir / "m.safetensors"));
  const SafetensorsFile f(dir / "s.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorView& b = f.tensors().at("b");
  EXPECT_EQ(std::vector<uint8_t>(b.data, b.data + b.nbytes), bb);
  std::vector<float> out(6);
  to_f32(out, f.tensors().at("a"));
  EXPECT_EQ(out, a);
}

TEST(SafetensorsWriter, MisuseIsAnErrorNamingFileAndTensor) {
  TempDir dir;
  const std::string path = dir / "x.safetensors";
  const std::vector<uint8_t> eight(8), four(4);
  auto make = [&] {
    return std::make_unique<SafetensorsWriter>(
        path, std::vector<TensorSpec>{{"first", DType::F32, {2}}, {"second", DType::U8, {4}}});
  };
  {
    auto w = make();
    EXPECT_MODEL_ERROR(w->write("second", four), path, "'second'", "out of order", "'first'");
    EXPECT_MODEL_ERROR(w->write("nope", four), path, "'nope'", "not in the header");
    w->write("first", four);
    EXPECT_MODEL_ERROR(w->write("first", eight), path, "'first'", "got 8 bytes", "only 4");
    EXPECT_MODEL_ERROR(w->write("second", four), path, "'second'", "'first'", "4 of its 8");
    w->write("first", four);
    w->write("second", four);
    EXPECT_MODEL_ERROR(w->write("first", four), path, "'first'", "already written");
  }
  // Destroyed without finish(): nothing is left behind.
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_FALSE(fs::exists(path));
  {
    auto w = make();
    w->write("first", eight);
    EXPECT_MODEL_ERROR(w->finish(), path, "'second'", "incomplete", "0 of 4");
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_MODEL_ERROR(SafetensorsWriter(dir / "no-such-dir/y.safetensors", {}), "no-such-dir");
  EXPECT_MODEL_ERROR(SafetensorsWriter(path, {{"w", DType::U8, {1}}, {"w", DType::U8, {1}}}), "'w'", "twice");
  EXPECT_MODEL_ERROR(SafetensorsWriter(path, {{"w", DType::U8, {-1}}}), "'w'", "negative");
  EXPECT_MODEL_ERROR(SafetensorsWriter(path, {{"w", DType::U8, {1ll << 40, 1ll << 40}}}), "'w'", "overflows");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(SafetensorsWriter, AnIoErrorNamesTheTensorAndRemovesTheFile) {
  TempDir dir;
  const std::string path = dir / "big.safetensors";
  // A file-size limit makes write() fail with EFBIG (SIGXFSZ ignored), the
  // same path a full disk takes.
  struct sigaction ign {}, old_sa {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ign, &old_sa), 0);
  rlimit old_lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_lim), 0);
  rlimit lim = old_lim;
  lim.rlim_cur = 64 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  std::string msg;
  {
    SafetensorsWriter w(path, {{"small", DType::U8, {16}}, {"huge", DType::U8, {1 << 20}}});
    w.write("small", std::vector<uint8_t>(16));
    msg = testing::model_error([&] { w.write("huge", std::vector<uint8_t>(1 << 20)); });
    EXPECT_MODEL_ERROR(w.finish(), path, "failed");
  }
  ::setrlimit(RLIMIT_FSIZE, &old_lim);
  ::sigaction(SIGXFSZ, &old_sa, nullptr);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("'huge'"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_FALSE(fs::exists(path));
}

TEST(CheckpointWriter, ShardsAtTheLimitAndCheckpointReadsThemBack) {
  TempDir dir;
  // 100 + 100 + 300 (alone: over the limit) + 50 + 50 bytes, limit 256:
  // shards {a, b}, {c}, {d, e}.
  const std::vector<TensorSpec> specs = {{"a", DType::U8, {100}},
                                         {"b", DType::U8, {100}},
                                         {"c", DType::U8, {300}},
                                         {"d", DType::U8, {50}},
                                         {"e", DType::U8, {50}}};
  std::map<std::string, std::vector<uint8_t>> data;
  {
    CheckpointWriter w(dir.path(), specs, 256);
    EXPECT_EQ(w.total_bytes(), 600u);
    EXPECT_EQ(w.files(), (std::vector<std::string>{"model-00001-of-00003.safetensors",
                                                   "model-00002-of-00003.safetensors",
                                                   "model-00003-of-00003.safetensors",
                                                   "model.safetensors.index.json"}));
    int salt = 0;
    for (const TensorSpec& s : specs) {
      data[s.name] = iota_bytes(static_cast<size_t>(s.shape[0]), ++salt);
      w.write(s.name, data[s.name]);
    }
    EXPECT_EQ(w.bytes_written(), 600u);
    w.finish();
  }
  const Checkpoint ck(dir.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  for (const auto& [name, bytes] : data) {
    const TensorView& v = ck.get(name);
    EXPECT_EQ(std::vector<uint8_t>(v.data, v.data + v.nbytes), bytes) << name;
  }
  EXPECT_EQ(ck.get("c").file, dir / "model-00002-of-00003.safetensors");
  const std::string index = qtest::read_file(dir / "model.safetensors.index.json");
  EXPECT_NE(index.find("\"total_size\": 600"), std::string::npos) << index;
}

TEST(CheckpointWriter, OneFileWhenItFitsAndNoFilesLeftOnFailure) {
  TempDir dir;
  {
    CheckpointWriter w(dir.path(), {{"a", DType::U8, {10}}}, 10);
    EXPECT_EQ(w.files(), (std::vector<std::string>{"model.safetensors"}));
    w.write("a", std::vector<uint8_t>(10));
    w.finish();
  }
  EXPECT_EQ(Checkpoint(dir.path()).names(), (std::vector<std::string>{"a"}));
  TempDir dir2;
  {
    CheckpointWriter w(dir2.path(), {{"a", DType::U8, {10}}, {"b", DType::U8, {10}}}, 10);
    w.write("a", std::vector<uint8_t>(10));
    w.write("b", std::vector<uint8_t>(5));  // the first shard is complete on disk by now
    EXPECT_TRUE(fs::exists(dir2 / "model-00001-of-00002.safetensors"));
    EXPECT_MODEL_ERROR(w.write("zzz", {}), dir2.path(), "'zzz'");
    EXPECT_MODEL_ERROR(w.finish(), "'b'", "incomplete");
  }
  EXPECT_TRUE(fs::is_empty(dir2.path())) << "an unfinished checkpoint removes every shard it wrote";
}

}  // namespace
}  // namespace chatradio::model
