// tokenizer.model: the protobuf reader (parse_model_proto) and the tokenizer
// built from it, via Tokenizer::load on the input bytes. A model it accepts
// must encode and decode fixed texts (ASCII, Chinese, invalid UTF-8, control
// bytes) and decode ids in and out of range, and the streaming decoder must
// agree with decode() (a mismatch traps). Any exception other than ModelError
// counts as a crash.
//
// fuzz-seeds: ../shared/models/stories260K/tokenizer.model
// fuzz-options: -max_len=16384
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/errors.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = chatradio::fuzz::write_scratch("tokenizer.model", data, size);
  try {
    const chatradio::model::Tokenizer tok = chatradio::model::Tokenizer::load(path);
    static constexpr std::string_view kTexts[] = {"Findings: no acute disease.\n", "  双肺纹理清晰 ",
                                                  "\xff\xfe bad \xc3", std::string_view("a\0b\t\x01", 5), ""};
    for (std::string_view text : kTexts) {
      std::vector<int32_t> ids = tok.encode(text, /*add_bos=*/true);
      ids.push_back(-1);
      ids.push_back(tok.vocab_size());
      ids.push_back(tok.vocab_size() - 1);
      chatradio::model::StreamDecoder stream(tok);
      std::string streamed;
      for (int32_t id : ids) streamed += stream.push(id);
      streamed += stream.flush();
      if (streamed != tok.decode(ids)) __builtin_trap();
    }
    for (int32_t id = 0; id < tok.vocab_size() && id < 64; ++id) (void)tok.piece(id);
    (void)tok.bos_id();
    (void)tok.eos_id();
    (void)tok.unk_id();
  } catch (const chatradio::model::ModelError&) {
  }
  return 0;
}
