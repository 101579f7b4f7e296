// SafetensorsFile: header validation (length prefix, JSON, dtypes, shapes,
// offsets, exact coverage of the data section) and the float conversions and
// non-finite checks of what it accepts. Any exception other than ModelError
// escapes and counts as a crash.
//
// Input: one mode byte, then the header JSON. The target builds the file as
// le64(header length) + header + data, the data sized to the largest end
// offset the header claims (capped at 1 MiB), so well-formed headers get past
// the size checks to the rest. Mode bits 0-1: data exact, one byte short, one
// byte over, 8 bytes over; bit 2: fill 0xff (NaN in every float dtype)
// instead of 0x3c (finite); bit 3: claim a header one byte longer.
//
// fuzz-seed-text: @{}
// fuzz-seed-text: @{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},"__metadata__":{"format":"pt"}}
// fuzz-seed-text: @{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"i":{"dtype":"I32","shape":[1],"data_offsets":[8,12]},"z":{"dtype":"U8","shape":[0],"data_offsets":[12,12]}}
// fuzz-seed-text: D{"x":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}}
// fuzz-seed-text: B{"q":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"r":{"dtype":"I8","shape":[2],"data_offsets":[8,10]}}
// fuzz-seed-text: @{"p.qweight":{"dtype":"I32","shape":[22,64],"data_offsets":[0,5632]},"p.scales":{"dtype":"F16","shape":[1,64],"data_offsets":[5632,5760]}}
// fuzz-seed-text: H{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "model/errors.h"
#include "model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using chatradio::model::DType;

// The largest data_offsets end the header claims, 0 when it does not parse.
uint64_t claimed_data_size(const std::string& header) {
  const nlohmann::json j = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return 0;
  uint64_t end = 0;
  for (const auto& [name, entry] : j.items()) {
    if (!entry.is_object()) continue;
    const auto off = entry.find("data_offsets");
    if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[1].is_number_unsigned()) continue;
    end = std::max(end, (*off)[1].get<uint64_t>());
  }
  return end;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string header(reinterpret_cast<const char*>(data + 1), size - 1);
  constexpr uint64_t kCap = uint64_t{1} << 20;
  uint64_t n = std::min(claimed_data_size(header), kCap);
  static constexpr int64_t kAdjust[] = {0, -1, 1, 8};
  n = static_cast<uint64_t>(std::max<int64_t>(0, static_cast<int64_t>(n) + kAdjust[mode & 3]));
  const uint64_t claimed_len = header.size() + ((mode & 8) ? 1 : 0);

  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>(claimed_len >> (8 * i));
  file += header;
  file.append(n, static_cast<char>((mode & 4) ? 0xff : 0x3c));
  const std::string path = chatradio::fuzz::write_scratch("f.safetensors", file.data(), file.size());
  try {
    const chatradio::model::SafetensorsFile f(path);
    for (const auto& [name, view] : f.tensors()) {
      if (view.dtype != DType::F32 && view.dtype != DType::F16 && view.dtype != DType::BF16) continue;
      std::vector<float> out(static_cast<size_t>(view.numel()));
      try {
        chatradio::model::to_f32(out, view);
      } catch (const chatradio::model::ModelError&) {
      }
      try {
        chatradio::model::check_finite(view);
      } catch (const chatradio::model::ModelError&) {
      }
    }
  } catch (const chatradio::model::ModelError&) {
  }
  return 0;
}
