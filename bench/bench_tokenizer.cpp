// Tokenizer throughput on 1 kB, 20 kB and 200 kB report-like texts: encode
// should scale as O(n log n), i.e. about flat ns/byte across the sizes.
//
// usage: bench_tokenizer [TOKENIZER_MODEL] [TEXT_FILE]
//   defaults: ../shared/tokenizers/llama2/tokenizer.model (run from the repo
//   root) and a built-in English + Chinese chest CT paragraph, repeated.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace {

using chatradio::model::StreamDecoder;
using chatradio::model::Tokenizer;

constexpr const char* kParagraph =
    "FINDINGS: The heart size is normal. The mediastinal and hilar contours are unremarkable. "
    "There is no focal consolidation, pleural effusion or pneumothorax. Mild degenerative changes "
    "of the thoracic spine.  IMPRESSION: No acute cardiopulmonary process.\n"
    "胸廓对称，纵隔心影居中，双肺纹理清晰，右肺上叶胸膜下可见小斑片及片状磨玻璃影，边缘不清。\n";

// Best of `reps` runs, in seconds: the least disturbed by other processes.
template <typename F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

// The first `n` bytes of `source` repeated, cut back to a character boundary.
std::string text_of_size(const std::string& source, size_t n) {
  std::string s;
  while (s.size() < n) s += source;
  s.resize(n);
  while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xC0) == 0x80) s.pop_back();
  if (!s.empty() && static_cast<unsigned char>(s.back()) >= 0xC0) s.pop_back();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "../shared/tokenizers/llama2/tokenizer.model";
  std::string source = kParagraph;
  if (argc > 2) {
    std::ifstream in(argv[2], std::ios::binary);
    source.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (source.empty()) {
      std::fprintf(stderr, "bench_tokenizer: %s is empty or unreadable\n", argv[2]);
      return 1;
    }
  }
  try {
    double load_s = 0;
    std::vector<Tokenizer> holder;
    load_s = best_seconds(1, [&] { holder.push_back(Tokenizer::load(model)); });
    const Tokenizer& tok = holder.front();
    std::printf("tokenizer %s: %d pieces, loaded in %.1f ms\n\n", model.c_str(), tok.vocab_size(),
                load_s * 1e3);
    std::printf("%10s %8s %12s %10s %12s %12s\n", "bytes", "tokens", "encode ms", "ns/byte",
                "decode ms", "stream ms");
    for (const size_t n : {size_t{1000}, size_t{20000}, size_t{200000}}) {
      const std::string text = text_of_size(source, n);
      const int reps = n >= 200000 ? 5 : n >= 20000 ? 20 : 200;
      std::vector<int32_t> ids;
      const double enc = best_seconds(reps, [&] { ids = tok.encode(text); });
      std::string out;
      const double dec = best_seconds(reps, [&] { out = tok.decode(ids); });
      const double stream = best_seconds(reps, [&] {
        StreamDecoder d(tok);
        std::string joined;
        for (const int32_t id : ids) joined += d.push(id);
        joined += d.flush();
        out = std::move(joined);
      });
      std::printf("%10zu %8zu %12.3f %10.1f %12.3f %12.3f\n", text.size(), ids.size(), enc * 1e3,
                  enc * 1e9 / static_cast<double>(text.size()), dec * 1e3, stream * 1e3);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
