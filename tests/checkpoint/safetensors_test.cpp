// SafetensorsFile validation (hand-made broken files), write_safetensors,
// to_f32 and Checkpoint assembly (single file and sharded with an index).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "helpers.h"
#include "model/errors.h"
#include "model/safetensors.h"

namespace chatradio::model {
namespace {

using chatradio::testing::as_bytes;
using chatradio::testing::le64;
using chatradio::testing::read_file;
using chatradio::testing::st_bytes;
using chatradio::testing::TempDir;
using chatradio::testing::write_file;

// Writes a raw file and tries to open it as safetensors.
class BrokenFile : public ::testing::Test {
 protected:
  std::string path() const { return dir_ / "bad.safetensors"; }
  void put(const std::string& bytes) { write_file(path(), bytes); }
  void open() { SafetensorsFile f(path()); }
  TempDir dir_;
};

TEST_F(BrokenFile, ShorterThanLengthPrefix) {
  put("");
  EXPECT_MODEL_ERROR(open(), path(), "too short");
  put("\x10\0\0\0");
  EXPECT_MODEL_ERROR(open(), path(), "too short");
}

TEST_F(BrokenFile, HeaderLengthLargerThanFile) {
  put(st_bytes("{}", "", 1000));
  EXPECT_MODEL_ERROR(open(), path(), "header length 1000", "file size");
}

TEST_F(BrokenFile, HeaderLengthHuge) {
  put(st_bytes("{}", "", 1ull << 62));
  EXPECT_MODEL_ERROR(open(), path(), "limit");
  put(st_bytes("{}", "", ~0ull));
  EXPECT_MODEL_ERROR(open(), path(), "limit");
}

TEST_F(BrokenFile, InvalidJson) {
  put(st_bytes("{\"w\": {\"dtype\": ", ""));
  EXPECT_MODEL_ERROR(open(), path(), "invalid JSON");
  put(st_bytes("", ""));
  EXPECT_MODEL_ERROR(open(), path(), "invalid JSON");
  put(st_bytes(std::string("{}\0\0\0\0\0\0", 8), ""));  // NUL padding is not JSON whitespace
  EXPECT_MODEL_ERROR(open(), path(), "invalid JSON");
  // Beyond double's range: nlohmann's out_of_range, not parse_error (found by fuzz_llama_config).
  put(st_bytes("{\"w\": {\"dtype\": \"F32\", \"shape\": [40E933], \"data_offsets\": [0, 4]}}", ""));
  EXPECT_MODEL_ERROR(open(), path(), "invalid JSON");
}

TEST_F(BrokenFile, JsonNotAnObject) {
  put(st_bytes("[1, 2, 3]", ""));
  EXPECT_MODEL_ERROR(open(), path(), "object");
  put(st_bytes("\"w\"", ""));
  EXPECT_MODEL_ERROR(open(), path(), "object");
}

TEST_F(BrokenFile, EntryNotAnObject) {
  put(st_bytes(R"({"w": [1, 2]})", ""));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "object");
}

TEST_F(BrokenFile, UnknownOrUnsupportedDtype) {
  for (const char* dt : {"F64", "BOOL", "F8_E4M3", "Q4_0", "f32", ""}) {
    SCOPED_TRACE(dt);
    put(st_bytes(std::string(R"({"layer.w": {"dtype": ")") + dt + R"(", "shape": [1], "data_offsets": [0, 8]}})",
                 std::string(8, '\0')));
    EXPECT_MODEL_ERROR(open(), path(), "'layer.w'", std::string("'") + dt + "'");
  }
  put(st_bytes(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "dtype");
}

TEST_F(BrokenFile, BadShape) {
  for (const char* shape : {"[-1, 2]", "[2.5]", "[2.0]", "[\"2\"]", "[null]", "2", "{\"a\": 1}"}) {
    SCOPED_TRACE(shape);
    put(st_bytes(std::string(R"({"emb": {"dtype": "F32", "shape": )") + shape + R"(, "data_offsets": [0, 8]}})",
                 std::string(8, '\0')));
    EXPECT_MODEL_ERROR(open(), path(), "'emb'", "shape");
  }
}

TEST_F(BrokenFile, ShapeProductOverflows) {
  put(st_bytes(R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", ""));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "overflow");
  put(st_bytes(R"({"w": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", ""));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "shape");
}

TEST_F(BrokenFile, ShapeTimesDtypeDiffersFromByteRange) {
  put(st_bytes(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 12]}})", std::string(24, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "[2, 3]", "24");
  put(st_bytes(R"({"w": {"dtype": "F16", "shape": [3], "data_offsets": [0, 12]}})", std::string(12, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "F16");
}

TEST_F(BrokenFile, BadDataOffsets) {
  for (const char* off : {"[0]", "[0, 4, 8]", "[-4, 0]", "[0, 4.0]", "\"0-4\"", "null"}) {
    SCOPED_TRACE(off);
    put(st_bytes(std::string(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": )") + off + "}}",
                 std::string(8, '\0')));
    EXPECT_MODEL_ERROR(open(), path(), "'w'", "data_offsets");
  }
}

TEST_F(BrokenFile, MissingEntryFields) {
  put(st_bytes(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "dtype");
  put(st_bytes(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", std::string(4, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "shape");
  put(st_bytes(R"({"w": {"dtype": "F32", "shape": [1]}})", std::string(4, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "data_offsets");
}

TEST_F(BrokenFile, OffsetBeyondFileEnd) {
  put(st_bytes(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [100, 116]}})", std::string(16, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "past the end");
}

TEST_F(BrokenFile, BeginAfterEnd) {
  put(st_bytes(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", std::string(16, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "begin");
}

TEST_F(BrokenFile, OverlappingTensors) {
  put(st_bytes(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
               std::string(20, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'a'", "'b'", "overlap");
  // Identical ranges are overlap too (two names aliasing one weight).
  put(st_bytes(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}})",
               std::string(16, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'a'", "'b'", "overlap");
}

TEST_F(BrokenFile, TruncatedDataSection) {
  std::vector<float> a(8, 1.0f), b(16, 2.0f);
  std::vector<uint8_t> ab = as_bytes(a), bb = as_bytes(b);
  write_safetensors(path(), {{"first", DType::F32, {8}, ab}, {"second", DType::F32, {4, 4}, bb}});
  std::string bytes = read_file(path());
  put(bytes.substr(0, bytes.size() - 3));
  EXPECT_MODEL_ERROR(open(), path(), "'second'", "past the end");
}

TEST_F(BrokenFile, DuplicateTensorName) {
  put(st_bytes(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                   "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
               std::string(2, '\0')));
  EXPECT_MODEL_ERROR(open(), path(), "'w'", "twice");
}

TEST_F(BrokenFile, BadMetadata) {
  put(st_bytes(R"({"__metadata__": {"format": 1}})", ""));
  EXPECT_MODEL_ERROR(open(), path(), "__metadata__", "format");
  put(st_bytes(R"({"__metadata__": ["pt"]})", ""));
  EXPECT_MODEL_ERROR(open(), path(), "__metadata__");
}

TEST_F(BrokenFile, DirectoryIsNotAFile) {
  EXPECT_MODEL_ERROR(SafetensorsFile f(dir_.path()), dir_.path());
  EXPECT_MODEL_ERROR(SafetensorsFile f(dir_ / "absent.safetensors"), "absent.safetensors");
}

// --- Valid hand-made files.

TEST(Safetensors, EmptyHeaderAndEdgeShapes) {
  TempDir dir;
  write_file(dir / "a.safetensors", st_bytes("{}", ""));
  EXPECT_TRUE(SafetensorsFile(dir / "a.safetensors").tensors().empty());
  // Scalar (shape []) holds one element; a zero-size tensor may sit anywhere.
  write_file(dir / "b.safetensors",
             st_bytes(R"({"s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]},
                          "z": {"dtype": "F32", "shape": [0, 5], "data_offsets": [4, 4]},
                          "__metadata__": {"format": "pt"}})",
                      le64(42)));
  SafetensorsFile f(dir / "b.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorView& s = f.tensors().at("s");
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.nbytes, 8u);
  int64_t v;
  std::memcpy(&v, s.data, 8);
  EXPECT_EQ(v, 42);
  EXPECT_EQ(f.tensors().at("z").numel(), 0);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(s.file, dir / "b.safetensors");
}

TEST(Safetensors, UnalignedDataIsReadCorrectly) {
  // A 3-byte header puts the data section at offset 11: every float is
  // misaligned. to_f32 must not assume alignment (UBSan/valgrind would flag it).
  TempDir dir;
  std::string header = R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  while ((8 + header.size()) % 4 != 1) header += " ";  // data starts at 4k+1

  std::vector<float> vals = {1.5f, -2.25f, 1e-3f};
  std::vector<uint8_t> raw = as_bytes(vals);
  write_file(dir / "u.safetensors", st_bytes(header, std::string(raw.begin(), raw.end())));
  SafetensorsFile f(dir / "u.safetensors");
  const TensorView& t = f.tensors().at("w");
  EXPECT_NE(reinterpret_cast<uintptr_t>(t.data) % 4, 0u);
  std::vector<float> out(3);
  to_f32(out, t);
  EXPECT_EQ(out, vals);

  std::string h16 = R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})";
  h16 += " ";  // 55-byte header: the data section starts at odd offset 63
  ASSERT_EQ(h16.size() % 2, 1u);
  std::string d16 = {'\x00', '\x3c', '\x00', '\xc0'};  // 1.0, -2.0
  write_file(dir / "h.safetensors", st_bytes(h16, d16));
  SafetensorsFile g(dir / "h.safetensors");
  std::vector<float> out2(2);
  to_f32(out2, g.tensors().at("h"));
  EXPECT_EQ(out2, (std::vector<float>{1.0f, -2.0f}));
}

// --- Writer.

TEST(WriteSafetensors, LayoutMatchesTheFormat) {
  TempDir dir;
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {f32_to_f16(0.5f), f32_to_f16(-1.0f), f32_to_f16(65504.0f)};
  std::vector<uint8_t> c = {1, 2, 3, 4, 5};
  std::vector<uint8_t> ab = as_bytes(a), bb = as_bytes(b);
  // Deliberately not alphabetical: the header must keep the given order.
  write_safetensors(dir / "w.safetensors",
                    {{"zeta", DType::F32, {2, 3}, ab}, {"alpha", DType::F16, {3}, bb}, {"mid", DType::U8, {5}, c}},
                    {{"format", "pt"}, {"source", "test"}});
  const std::string bytes = read_file(dir / "w.safetensors");
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u) << "header padded to a multiple of 8";
  ASSERT_EQ(bytes.size(), 8 + n + 24 + 6 + 5) << "data contiguous, nothing else";
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos) << "spaces pad";
  size_t pz = header.find("\"zeta\""), pa = header.find("\"alpha\""), pm = header.find("\"mid\"");
  EXPECT_LT(pz, pa);
  EXPECT_LT(pa, pm);
  EXPECT_NE(header.find(R"("data_offsets":[0,24])"), std::string::npos) << header;
  EXPECT_NE(header.find(R"("data_offsets":[24,30])"), std::string::npos) << header;
  EXPECT_NE(header.find(R"("data_offsets":[30,35])"), std::string::npos) << header;
  EXPECT_FALSE(std::filesystem::exists(dir / "w.safetensors.tmp"));

  SafetensorsFile f(dir / "w.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("source"), "test");
  const TensorView& z = f.tensors().at("zeta");
  EXPECT_EQ(z.dtype, DType::F32);
  EXPECT_EQ(z.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(z.data) % 8, 0u) << "data section 8-aligned";
  std::vector<float> out(6);
  to_f32(out, z);
  EXPECT_EQ(out, a);
  std::vector<float> out16(3);
  to_f32(out16, f.tensors().at("alpha"));
  EXPECT_EQ(out16, (std::vector<float>{0.5f, -1.0f, 65504.0f}));
  const TensorView& m = f.tensors().at("mid");
  EXPECT_EQ(std::vector<uint8_t>(m.data, m.data + m.nbytes), c);
}

TEST(WriteSafetensors, RejectsInconsistentInput) {
  TempDir dir;
  std::vector<uint8_t> four(4);
  EXPECT_MODEL_ERROR(write_safetensors(dir / "x.safetensors", {{"w", DType::F32, {2}, four}}), "'w'", "8");
  EXPECT_MODEL_ERROR(write_safetensors(dir / "x.safetensors", {{"w", DType::U8, {4}, four}, {"w", DType::U8, {4}, four}}),
                     "'w'", "twice");
  EXPECT_MODEL_ERROR(write_safetensors(dir / "x.safetensors", {{"__metadata__", DType::U8, {4}, four}}),
                     "__metadata__");
  EXPECT_MODEL_ERROR(write_safetensors(dir / "x.safetensors", {{"w", DType::U8, {-4}, four}}), "'w'", "negative");
  EXPECT_MODEL_ERROR(write_safetensors(dir / "no-such-dir/x.safetensors", {}), "no-such-dir");
  EXPECT_FALSE(std::filesystem::exists(dir / "x.safetensors"));
}

// --- to_f32.

TEST(ToF32, RejectsNonFloatAndWrongSize) {
  TempDir dir;
  std::vector<int32_t> ints = {1, 2};
  std::vector<uint8_t> ib = as_bytes(ints);
  std::vector<float> fl = {1, 2, 3};
  std::vector<uint8_t> fb = as_bytes(fl);
  write_safetensors(dir / "i.safetensors", {{"ids", DType::I32, {2}, ib}, {"f", DType::F32, {3}, fb}});
  SafetensorsFile f(dir / "i.safetensors");
  std::vector<float> out(2);
  EXPECT_MODEL_ERROR(to_f32(out, f.tensors().at("ids")), "i.safetensors", "'ids'", "I32");
  EXPECT_MODEL_ERROR(to_f32(out, f.tensors().at("f")), "i.safetensors", "'f'", "3");
}

TEST(ToF32, Bf16) {
  TempDir dir;
  std::vector<uint16_t> v = {f32_to_bf16(1.0f), f32_to_bf16(-3.5f), f32_to_bf16(1e30f), f32_to_bf16(-0.0f)};
  std::vector<uint8_t> vb = as_bytes(v);
  write_safetensors(dir / "b.safetensors", {{"b", DType::BF16, {2, 2}, vb}});
  SafetensorsFile f(dir / "b.safetensors");
  std::vector<float> out(4);
  to_f32(out, f.tensors().at("b"));
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -3.5f);
  EXPECT_NEAR(out[2], 1e30f, 1e30f * 1e-2f);
  EXPECT_TRUE(out[3] == 0.0f && std::signbit(out[3]));
  // The conversion itself keeps infinity; to_f32 refuses it (strict_test.cpp).
  EXPECT_EQ(bf16_to_f32(0x7f80), INFINITY);
}

// --- Checkpoint.

class CheckpointDir : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 6; ++i) a_.push_back(0.5f * i);
    for (int i = 0; i < 4; ++i) b_.push_back(-1.0f * i);
    for (int i = 0; i < 3; ++i) c_.push_back(10.0f + i);
    ab_ = as_bytes(a_), bb_ = as_bytes(b_), cb_ = as_bytes(c_);
  }
  // Two shards: a+b in shard 1, c in shard 2, and the matching index.
  void write_sharded(const std::string& index_json = "") {
    write_safetensors(dir_ / "model-00001-of-00002.safetensors",
                      {{"a", DType::F32, {2, 3}, ab_}, {"b", DType::F32, {4}, bb_}});
    write_safetensors(dir_ / "model-00002-of-00002.safetensors", {{"c", DType::F32, {3}, cb_}});
    write_index(index_json.empty() ? R"({"metadata": {"total_size": 52}, "weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}})"
                                   : index_json);
  }
  void write_index(const std::string& text) { write_file(index(), text); }
  std::string index() const { return dir_ / "model.safetensors.index.json"; }
  std::vector<float> read(const Checkpoint& ck, const std::string& name) {
    const TensorView& t = ck.get(name);
    std::vector<float> out(static_cast<size_t>(t.numel()));
    to_f32(out, t);
    return out;
  }

  TempDir dir_;
  std::vector<float> a_, b_, c_;
  std::vector<uint8_t> ab_, bb_, cb_;
};

TEST_F(CheckpointDir, SingleFile) {
  write_safetensors(dir_ / "model.safetensors", {{"a", DType::F32, {2, 3}, ab_}, {"c", DType::F32, {3}, cb_}});
  Checkpoint ck(dir_.path());
  EXPECT_EQ(ck.dir(), dir_.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "c"}));
  EXPECT_TRUE(ck.has("a"));
  EXPECT_FALSE(ck.has("b"));
  EXPECT_EQ(read(ck, "a"), a_);
  EXPECT_EQ(ck.get("c", {3}).nbytes, 12u);
}

TEST_F(CheckpointDir, Sharded) {
  write_sharded();
  Checkpoint ck(dir_.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(read(ck, "a"), a_);
  EXPECT_EQ(read(ck, "b"), b_);
  EXPECT_EQ(read(ck, "c"), c_);
  EXPECT_EQ(ck.get("c").file, dir_ / "model-00002-of-00002.safetensors");
  EXPECT_EQ(ck.get("a", {2, 3}).shape, (std::vector<int64_t>{2, 3}));
}

TEST_F(CheckpointDir, SingleFileWinsOverIndex) {
  write_sharded();
  write_safetensors(dir_ / "model.safetensors", {{"only", DType::F32, {3}, cb_}});
  EXPECT_EQ(Checkpoint(dir_.path()).names(), (std::vector<std::string>{"only"}));
}

TEST_F(CheckpointDir, NeitherFilePresent) {
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), dir_.path(), "model.safetensors", "index.json");
}

TEST_F(CheckpointDir, MissingTensorOnGet) {
  write_sharded();
  Checkpoint ck(dir_.path());
  EXPECT_MODEL_ERROR(ck.get("model.norm.weight"), dir_.path(), "missing tensor", "model.norm.weight");
  EXPECT_MODEL_ERROR((ck.get("lm_head.weight", {3})), "lm_head.weight");
}

TEST_F(CheckpointDir, WrongShapeOnGet) {
  write_sharded();
  Checkpoint ck(dir_.path());
  EXPECT_MODEL_ERROR((ck.get("a", {3, 2})), "model-00001-of-00002.safetensors", "'a'", "expected shape [3, 2]",
                     "got [2, 3]");
  EXPECT_MODEL_ERROR((ck.get("c", {})), "'c'", "expected shape []", "got [3]");
}

TEST_F(CheckpointDir, IndexNamesMissingShard) {
  write_sharded(R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "d": "model-00003.safetensors"}})");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "model-00003.safetensors", "'d'");
}

TEST_F(CheckpointDir, IndexNamesTensorNotInItsShard) {
  write_sharded(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                   "c": "model-00001-of-00002.safetensors"}})");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "'c'",
                     "model-00001-of-00002.safetensors");
  write_sharded(R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "ghost": "model-00002-of-00002.safetensors"}})");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "'ghost'");
}

TEST_F(CheckpointDir, TensorInTwoShards) {
  write_sharded();
  write_safetensors(dir_ / "model-00002-of-00002.safetensors", {{"c", DType::F32, {3}, cb_}, {"b", DType::F32, {4}, bb_}});
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "'b'", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors");
}

TEST_F(CheckpointDir, ShardNamesMustStayInsideTheDirectory) {
  // A real file outside the checkpoint directory that a hostile index points at.
  TempDir outside;
  write_safetensors(outside / "evil.safetensors", {{"a", DType::F32, {2, 3}, ab_}});
  std::filesystem::create_directory(dir_ / "sub");
  write_safetensors(dir_ / "sub/x.safetensors", {{"a", DType::F32, {2, 3}, ab_}});
  const std::string rel = "../" + std::filesystem::path(outside.path()).filename().string() + "/evil.safetensors";
  for (const std::string& shard : {rel, outside / "evil.safetensors", std::string("sub/x.safetensors"),
                                   std::string(".."), std::string(""), std::string("sub\\x.safetensors")}) {
    SCOPED_TRACE(shard);
    std::string escaped;  // JSON string escaping for the backslash case
    for (char ch : shard) escaped += ch == '\\' ? std::string("\\\\") : std::string(1, ch);
    write_index(R"({"weight_map": {"a": ")" + escaped + R"("}})");
    EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "'a'", "plain file name");
  }
}

TEST_F(CheckpointDir, MalformedIndex) {
  write_sharded("{\"weight_map\": ");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "invalid JSON");
  write_sharded(R"({"metadata": {}})");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "weight_map");
  write_sharded(R"({"weight_map": {}})");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "weight_map");
  write_sharded(R"({"weight_map": {"a": 1}})");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "'a'");
  write_sharded(R"([])");
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model.safetensors.index.json", "object");
}

TEST_F(CheckpointDir, BrokenShardIsNamed) {
  write_sharded();
  std::string bytes = read_file(dir_ / "model-00002-of-00002.safetensors");
  write_file(dir_ / "model-00002-of-00002.safetensors", bytes.substr(0, bytes.size() - 1));
  EXPECT_MODEL_ERROR(Checkpoint ck(dir_.path()), "model-00002-of-00002.safetensors", "'c'", "past the end");
}

}  // namespace
}  // namespace chatradio::model
