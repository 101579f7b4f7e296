// BlockManager: the paged KV cache as bookkeeping only — block ids, reference
// counts, per-sequence block tables and the prefix cache. It never touches a
// tensor; the backend owns the memory behind the ids (kernels/ops.h: block b
// holds positions [i*block_size, (i+1)*block_size) of every sequence whose
// table lists b at index i).
//
// Every block is in exactly one of three states:
//   used    refcount > 0: listed in sequence tables and/or pinned as the source
//           of a pending copy;
//   cached  refcount 0 but registered in the prefix cache: its KV is still
//           valid and reusable, kept in an LRU and evicted only when the pool
//           needs a block;
//   free    refcount 0 and holding nothing reusable.
// so free + cached + used == n_blocks at all times (validate() checks it).
//
// Prefix cache keying: a FULL block is keyed by hash(hash of everything before
// it, its own tokens) — chain hashing, so one key names a whole prefix. A hit
// is never trusted on the hash alone: the block's tokens are compared, and so
// is its parent (block id and allocation generation of the cached block that
// held the previous block_size tokens when this one was computed). By
// induction the whole prefix is then equal token for token, so even a hash
// function that always collides can only cost hits, never give wrong KV.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace chatradio::engine {

using BlockId = int32_t;
using SeqId = uint64_t;

// Key of one full block: `tokens` chained onto the key of everything before it
// (0 for the first block). Pluggable so tests can force collisions.
using BlockHashFn = uint64_t (*)(uint64_t prefix_hash, std::span<const int32_t> tokens);

// A strong 64-bit mix (murmur3/splitmix finalizer over token pairs).
uint64_t default_block_hash(uint64_t prefix_hash, std::span<const int32_t> tokens);

// The backend copies block src into block dst (all layers, K and V) before it
// computes anything in the step that lists the copy.
struct BlockCopy {
  BlockId src = -1;
  BlockId dst = -1;
};

class BlockManager {
 public:
  // Throws std::invalid_argument unless n_blocks >= 1 and block_size >= 1.
  explicit BlockManager(int n_blocks, int block_size = 16, BlockHashFn hash = nullptr);

  int n_blocks() const { return n_blocks_; }
  int block_size() const { return block_size_; }
  int blocks_for(int n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }

  int n_free() const { return static_cast<int>(free_.size()); }
  int n_cached() const { return lru_size_; }
  int n_used() const { return n_blocks_ - n_free() - n_cached(); }
  // Blocks an allocation can take right now (cached ones are evicted LRU).
  int n_available() const { return n_free() + n_cached(); }
  double usage() const { return static_cast<double>(n_used()) / n_blocks_; }
  int ref_count(BlockId b) const { return ref_[b]; }
  bool is_cached(BlockId b) const { return hashed_[b]; }

  // ---- Prefix cache -------------------------------------------------------
  // The cached blocks holding the longest run of leading full blocks of
  // `tokens` (verified, see above). No side effects: nothing is retained.
  std::vector<BlockId> lookup(std::span<const int32_t> tokens) const;
  // Hit/miss counters, in full blocks; the scheduler records a lookup only
  // when the request is actually admitted, so retries do not inflate them.
  void record_lookup(int hits, int misses);
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  double hit_rate() const;

  // ---- Sequence tables ----------------------------------------------------
  bool has_sequence(SeqId seq) const { return tables_.count(seq) != 0; }
  int n_sequences() const { return static_cast<int>(tables_.size()); }
  // Empty for an unknown sequence.
  const std::vector<BlockId>& table(SeqId seq) const;
  // Creates `seq`'s table starting with `shared` (blocks from lookup(), taken
  // in order and retained). The sequence must not exist yet.
  void attach(SeqId seq, std::span<const BlockId> shared);
  // Appends fresh blocks until the table covers n_tokens positions.
  // All or nothing: returns false, changing nothing, when too few are available.
  bool grow(SeqId seq, int n_tokens);
  // Registers the table's newly full blocks (those inside [0, n_computed))
  // in the prefix cache. `tokens` is the sequence's token list (at least
  // n_computed long); a block whose prefix is already cached elsewhere stays
  // private and is simply freed later.
  void commit(SeqId seq, std::span<const int32_t> tokens, int n_computed);
  // Releases every block of `seq` (last block first, so a prefix's tail is
  // evicted before its head) and forgets the table. No-op if unknown.
  void free_sequence(SeqId seq);
  // Blocks that would become unreferenced if all of `seqs` were freed (blocks
  // they share only among themselves count once; pinned ones never).
  int freeable_by(std::span<const SeqId> seqs) const;

  // ---- Copy sources -------------------------------------------------------
  // A block being copied must survive until the backend has copied it, so the
  // source is pinned (one reference) for the step.
  void pin(BlockId b);
  void unpin(BlockId b);  // undoes one pin(b)
  void release_pins();    // after the step ran
  int n_pins() const { return static_cast<int>(pins_.size()); }

  // Empty when every invariant holds, else a description of the first broken one:
  // refcounts equal table references plus pins; each block in exactly one
  // state; the free list, the LRU and the hash map agree with the flags.
  std::string validate() const;

 private:
  struct Table {
    std::vector<BlockId> blocks;
    int n_registered = 0;      // leading full blocks already offered to the cache
    uint64_t prefix_hash = 0;  // chain hash of those blocks
    BlockId canon = -1;        // cached block holding the last of them (parent of the next)
    uint32_t canon_gen = 0;
  };

  BlockId allocate();  // free first, then evict the LRU cached block; -1 if none
  void retain(BlockId b);
  void release(BlockId b);
  void unhash(BlockId b);
  bool holds(BlockId b, std::span<const int32_t> tokens, BlockId parent, uint32_t parent_gen) const;
  std::span<const int32_t> stored_tokens(BlockId b) const;
  void lru_push_back(BlockId b);
  void lru_remove(BlockId b);

  int n_blocks_;
  int block_size_;
  BlockHashFn hash_fn_;

  std::vector<int> ref_;
  std::vector<uint32_t> gen_;  // bumped whenever a block gets new content
  std::vector<bool> hashed_;   // registered in map_ (map_[hash_[b]] == b)
  std::vector<uint64_t> hash_;
  std::vector<BlockId> parent_;
  std::vector<uint32_t> parent_gen_;
  std::vector<int32_t> tokens_;  // [n_blocks, block_size]: tokens of hashed blocks
  std::unordered_map<uint64_t, BlockId> map_;

  std::vector<BlockId> free_;
  // Intrusive LRU of cached blocks: head is evicted first.
  std::vector<BlockId> lru_prev_, lru_next_;
  std::vector<bool> in_lru_;
  BlockId lru_head_ = -1, lru_tail_ = -1;
  int lru_size_ = 0;

  std::unordered_map<SeqId, Table> tables_;
  const std::vector<BlockId> empty_table_;  // what table() returns for unknown sequences
  std::vector<BlockId> pins_;
  uint64_t hits_ = 0, misses_ = 0;
  mutable std::vector<int> scratch_;  // freeable_by's per-block counts, kept zeroed
};

}  // namespace chatradio::engine
