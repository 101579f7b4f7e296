// Shared by the segmenter tests: one segmenter (and the dictionary behind it)
// used by several threads at once must give every thread the single-threaded
// answer, since the server segments many reports concurrently with one instance.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "server/text/segment.h"

namespace chatradio::text {

inline void expect_same_tokens_across_threads(const Segmenter& seg, const std::string& text) {
  const std::vector<std::string> expected = seg.segment(text);
  std::vector<std::vector<std::string>> got(4);
  std::vector<std::thread> threads;
  for (std::vector<std::string>& g : got) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) g = seg.segment(text);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::vector<std::string>& g : got) EXPECT_EQ(g, expected);
}

}  // namespace chatradio::text
