// Checkpoint assembly from model.safetensors.index.json: the index JSON is
// the input; the directory holds two valid shards (a, b in the first; c in
// the second). Every tensor the checkpoint then offers is fetched and
// converted. Any exception other than ModelError counts as a crash.
//
// fuzz-seed-text: {"metadata":{"total_size":40},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}
// fuzz-seed-text: {"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}
// fuzz-seed-text: {"weight_map":{"a":"../model-00001-of-00002.safetensors"}}
// fuzz-seed-text: {"weight_map":{}}
#include <cstdint>
#include <string>
#include <vector>

#include "model/errors.h"
#include "model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using chatradio::model::DType;

template <class T>
std::span<const uint8_t> bytes_of(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string& dir = chatradio::fuzz::scratch_dir();
  static const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  static const std::vector<int32_t> b = {7, 8};
  static const std::vector<uint16_t> c = {0x3c00, 0xc000, 0x0001};
  chatradio::model::write_safetensors(dir + "/model-00001-of-00002.safetensors",
                                      {{"a", DType::F32, {2, 3}, bytes_of(a)}, {"b", DType::I32, {2}, bytes_of(b)}});
  chatradio::model::write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"c", DType::F16, {3}, bytes_of(c)}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  chatradio::fuzz::write_scratch("model.safetensors.index.json", data, size);
  try {
    const chatradio::model::Checkpoint ck(chatradio::fuzz::scratch_dir());
    for (const std::string& name : ck.names()) {
      const chatradio::model::TensorView& v = ck.get(name);
      if (v.dtype == DType::I32) continue;
      std::vector<float> out(static_cast<size_t>(v.numel()));
      chatradio::model::to_f32(out, v);
    }
    if (!ck.unread().empty()) __builtin_trap();  // every tensor was just read
  } catch (const chatradio::model::ModelError&) {
  }
  return 0;
}
