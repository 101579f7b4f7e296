// Shared helpers of the CUDA op tests: host fp16 conversions, device buffers
// with canary guards, error metrics, and the fixture that skips without a GPU.
#pragma once

#if defined(CHATRADIO_MINI_GTEST)
#include "tests/gpu/mini_gtest.h"
#else
#include <gtest/gtest.h>
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"

namespace chatradio::gpu_test {

// ---- fp16 on the host (IEEE binary16, round to nearest even) -------------------

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant · 2^-24, exact in float
    const float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  const uint32_t bits = exp == 31 ? sign | 0x7f800000u | (mant << 13) : sign | ((exp + 112) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                                // below 2^-14: subnormal
    float a;
    std::memcpy(&a, &ax, sizeof a);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t h = (((ax >> 23) - 112) << 10) | ((ax >> 13) & 0x3ffu);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry may bump the exponent: correct
  return static_cast<uint16_t>(sign | h);
}

inline float round_half(float f) { return half_to_float(float_to_half(f)); }

inline std::vector<uint16_t> to_half(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_half(v[i]);
  return h;
}
inline std::vector<float> to_float(const std::vector<uint16_t>& h) {
  std::vector<float> v(h.size());
  for (size_t i = 0; i < h.size(); ++i) v[i] = half_to_float(h[i]);
  return v;
}

// Normal(0, scale) values already rounded to fp16 (so host and device see the same inputs).
inline std::vector<float> randn_h(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = round_half(d(g));
  return v;
}

// ---- CUDA plumbing -------------------------------------------------------------------

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
#define CR_CUDA(call) ::chatradio::gpu_test::check((call), #call)

// A device array of n T with 256 canary bytes (0xA5) on each side, so an
// out-of-bounds write next to the buffer is caught; poison() fills the payload
// with 0xFF bytes (fp16 and fp32 NaN) so unwritten outputs show up as NaN.
template <class T>
class DevBuf {
 public:
  static constexpr size_t kGuard = 256;
  explicit DevBuf(size_t n) : n_(n) {
    CR_CUDA(cudaMalloc(&base_, bytes() + 2 * kGuard));
    CR_CUDA(cudaMemset(base_, 0xA5, bytes() + 2 * kGuard));
  }
  explicit DevBuf(const std::vector<T>& host) : DevBuf(host.size()) { upload(host); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() { cudaFree(base_); }

  T* get() const { return reinterpret_cast<T*>(base_ + kGuard); }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  void upload(const std::vector<T>& h) {
    if (h.size() != n_) throw std::runtime_error("DevBuf::upload size mismatch");
    CR_CUDA(cudaMemcpy(get(), h.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    CR_CUDA(cudaMemcpy(h.data(), get(), bytes(), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() { CR_CUDA(cudaMemset(get(), 0xFF, bytes())); }
  bool guards_intact() const {
    std::vector<unsigned char> g(kGuard);
    for (const unsigned char* p : {base_, base_ + kGuard + bytes()}) {
      CR_CUDA(cudaMemcpy(g.data(), p, kGuard, cudaMemcpyDeviceToHost));
      for (unsigned char c : g)
        if (c != 0xA5) return false;
    }
    return true;
  }

 private:
  size_t n_;
  unsigned char* base_ = nullptr;
};

// ---- comparisons ---------------------------------------------------------------------

struct ErrorStats {
  double nmse = 0.0;     // Σ(out − ref)² / Σ ref²
  double max_abs = 0.0;  // max |out − ref|
  double ref_max = 0.0;  // max |ref|
  size_t nonfinite = 0;  // NaN / Inf in out
  std::string str() const {
    std::ostringstream os;
    os << "nmse " << nmse << ", max_abs " << max_abs << " (ref max " << ref_max << "), non-finite " << nonfinite;
    return os.str();
  }
};

inline ErrorStats compare(const std::vector<float>& out, const std::vector<float>& ref) {
  ErrorStats s;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < out.size() && i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) {
      ++s.nonfinite;
      continue;
    }
    const double d = double(out[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
    s.max_abs = std::max(s.max_abs, std::fabs(d));
    s.ref_max = std::max(s.ref_max, std::fabs(double(ref[i])));
  }
  s.nmse = den > 0.0 ? num / den : num;
  if (out.size() != ref.size()) s.nonfinite += 1;  // a size mismatch must never pass
  return s;
}

// ---- the fixture --------------------------------------------------------------------

// Every GPU test derives from this: without a usable device it skips with the reason.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      cudaGetLastError();  // clear the sticky "no device" error
      GTEST_SKIP() << "no CUDA GPU present: "
                   << (e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0");
    }
    CR_CUDA(cudaStreamCreate(&stream_));
    CR_CUDA(kernels::cuda::prepare_device());  // what every owner of a device does once (cuda_ops.h)
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  void sync() { CR_CUDA(cudaStreamSynchronize(stream_)); }
  cudaStream_t stream_ = nullptr;
};

}  // namespace chatradio::gpu_test
