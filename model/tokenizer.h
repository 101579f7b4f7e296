// Our own SentencePiece BPE tokenizer, as Llama-2-family models use it. It reads
// tokenizer.model (a serialized sentencepiece ModelProto) without libsentencepiece,
// which must never be linked beside gRPC (DEVELOPERS.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace chatradio::model {

// Immutable once loaded: const members may be called from many threads.
class Tokenizer {
 public:
  // Throws ModelError for unreadable files, non-BPE models and normalizers we
  // do not implement (e.g. an NFKC precompiled charsmap), naming the field.
  static Tokenizer load(const std::string& path);

  // Ids of `text` (UTF-8; invalid bytes are treated as SentencePiece does).
  // No BOS unless add_bos. O(n log n) in the text length.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const;
  // Ids of `text` read as the continuation of earlier text: without the
  // dummy-prefix "▁" that sentencepiece puts before a whole text. Generated
  // output decodes without its first piece's "▁", so this reading is the one
  // that can give back the ids a model generated after a prompt.
  std::vector<int32_t> encode_continuation(std::string_view text) const;
  // Text of ids, as sentencepiece's DecodeIds would produce it. An id outside
  // the vocabulary renders like <unk> (" ⁇ ") where spm would fail the call.
  std::string decode(const std::vector<int32_t>& ids) const;

  int vocab_size() const;
  // -1 when the model defines no such control piece, as spm reports it.
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  // The piece text ("▁the", "<0x0A>"); empty for an id outside the vocabulary.
  std::string_view piece(int32_t id) const;

  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class StreamDecoder;
};

// Turns a stream of generated ids into text deltas that are always complete
// UTF-8: byte-fallback pieces of one character are held until it is whole.
// Concatenating every push() and the final flush() equals decode(all ids).
// Holds a reference to `tok`, which must outlive it.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok);
  std::string push(int32_t id);
  // Whatever is still held (an incomplete character becomes U+FFFD).
  std::string flush();

 private:
  friend class Tokenizer;  // decode() runs the same machine, so the two always agree
  void append(std::string& dst, int32_t id);
  void release_bytes(std::string& dst, bool final);

  // O(1) state per token instead of re-decoding the whole prefix:
  const Tokenizer& tok_;
  std::string held_;         // byte-fallback bytes of a character not yet complete
  bool at_start_ = true;     // a leading U+2581 of the next piece is the dummy prefix
  bool stripped_ws_ = false;  // the previous piece gave up its dummy prefix
  bool wrote_text_ = false;  // any text emitted so far
};

}  // namespace chatradio::model
