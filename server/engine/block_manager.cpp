#include "server/engine/block_manager.h"

#include <algorithm>
#include <cassert>
#include <stdexcept>

namespace chatradio::engine {
namespace {

// murmur3's 64-bit finalizer: a bijection with full avalanche, so chaining it
// never loses state (unlike multiply-only mixes with a zero trap).
uint64_t fmix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

}  // namespace

uint64_t default_block_hash(uint64_t prefix_hash, std::span<const int32_t> tokens) {
  uint64_t h = fmix64(prefix_hash ^ 0x9e3779b97f4a7c15ULL);
  size_t i = 0;
  for (; i + 1 < tokens.size(); i += 2) {
    const uint64_t w = (static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])) << 32) |
                       static_cast<uint32_t>(tokens[i + 1]);
    // w * odd + c is a bijection of w, so distinct words give distinct inputs.
    h = fmix64(h ^ (w * 0x9fb21c651e98df25ULL + 0x2545f4914f6cdd1dULL));
  }
  if (i < tokens.size()) {
    h = fmix64(h ^ (static_cast<uint32_t>(tokens[i]) * 0xd6e8feb86659fd93ULL + 1));
  }
  return fmix64(h ^ tokens.size());
}

BlockManager::BlockManager(int n_blocks, int block_size, BlockHashFn hash)
    : n_blocks_(n_blocks), block_size_(block_size), hash_fn_(hash ? hash : default_block_hash) {
  if (n_blocks < 1 || block_size < 1) {
    throw std::invalid_argument("BlockManager: n_blocks and block_size must be >= 1 (got " +
                                std::to_string(n_blocks) + ", " + std::to_string(block_size) + ")");
  }
  ref_.assign(n_blocks, 0);
  gen_.assign(n_blocks, 0);
  hashed_.assign(n_blocks, false);
  hash_.assign(n_blocks, 0);
  parent_.assign(n_blocks, -1);
  parent_gen_.assign(n_blocks, 0);
  tokens_.assign(static_cast<size_t>(n_blocks) * block_size, 0);
  lru_prev_.assign(n_blocks, -1);
  lru_next_.assign(n_blocks, -1);
  in_lru_.assign(n_blocks, false);
  scratch_.assign(n_blocks, 0);
  // Stack popped from the back: hand out low ids first (easier to read in logs).
  free_.reserve(n_blocks);
  for (BlockId b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
}

double BlockManager::hit_rate() const {
  const uint64_t total = hits_ + misses_;
  return total == 0 ? 0.0 : static_cast<double>(hits_) / static_cast<double>(total);
}

void BlockManager::record_lookup(int hits, int misses) {
  hits_ += static_cast<uint64_t>(hits);
  misses_ += static_cast<uint64_t>(misses);
}

std::span<const int32_t> BlockManager::stored_tokens(BlockId b) const {
  return {tokens_.data() + static_cast<size_t>(b) * block_size_, static_cast<size_t>(block_size_)};
}

bool BlockManager::holds(BlockId b, std::span<const int32_t> tokens, BlockId parent,
                         uint32_t parent_gen) const {
  if (parent_[b] != parent || (parent >= 0 && parent_gen_[b] != parent_gen)) return false;
  const auto stored = stored_tokens(b);
  return std::equal(stored.begin(), stored.end(), tokens.begin(), tokens.end());
}

std::vector<BlockId> BlockManager::lookup(std::span<const int32_t> tokens) const {
  std::vector<BlockId> out;
  uint64_t h = 0;
  const size_t bs = static_cast<size_t>(block_size_);
  for (size_t k = 0; (k + 1) * bs <= tokens.size(); ++k) {
    const auto block = tokens.subspan(k * bs, bs);
    h = hash_fn_(h, block);
    const auto it = map_.find(h);
    if (it == map_.end()) break;
    const BlockId parent = out.empty() ? -1 : out.back();
    const uint32_t pgen = out.empty() ? 0 : gen_[parent];
    if (!holds(it->second, block, parent, pgen)) break;  // a collision or a stale chain
    out.push_back(it->second);
  }
  return out;
}

const std::vector<BlockId>& BlockManager::table(SeqId seq) const {
  const auto it = tables_.find(seq);
  return it == tables_.end() ? empty_table_ : it->second.blocks;
}

void BlockManager::attach(SeqId seq, std::span<const BlockId> shared) {
  if (tables_.count(seq)) throw std::logic_error("BlockManager::attach: sequence already has a table");
  Table& t = tables_[seq];
  t.blocks.reserve(shared.size() + 1);
  for (const BlockId b : shared) {
    assert(hashed_[b]);
    retain(b);
    t.blocks.push_back(b);
  }
  t.n_registered = static_cast<int>(shared.size());
  if (!shared.empty()) {
    t.prefix_hash = hash_[shared.back()];
    t.canon = shared.back();
    t.canon_gen = gen_[t.canon];
  }
}

bool BlockManager::grow(SeqId seq, int n_tokens) {
  Table& t = tables_[seq];
  const int need = blocks_for(n_tokens) - static_cast<int>(t.blocks.size());
  if (need <= 0) return true;
  if (need > n_available()) return false;
  for (int i = 0; i < need; ++i) {
    const BlockId b = allocate();
    ref_[b] = 1;
    t.blocks.push_back(b);
  }
  return true;
}

void BlockManager::commit(SeqId seq, std::span<const int32_t> tokens, int n_computed) {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  Table& t = it->second;
  const size_t bs = static_cast<size_t>(block_size_);
  const int n_full = std::min(n_computed / block_size_, static_cast<int>(t.blocks.size()));
  for (; t.n_registered < n_full; ++t.n_registered) {
    const size_t k = static_cast<size_t>(t.n_registered);
    const BlockId b = t.blocks[k];
    const auto block = tokens.subspan(k * bs, bs);
    const uint64_t h = hash_fn_(t.prefix_hash, block);
    const BlockId parent = t.canon;
    const uint32_t pgen = t.canon_gen;
    BlockId canon = b;
    const auto found = map_.find(h);
    if (found != map_.end() && found->second != b && holds(found->second, block, parent, pgen)) {
      canon = found->second;  // same prefix computed twice: keep the first, ours stays private
    } else if (found == map_.end() || found->second != b) {
      if (found != map_.end()) unhash(found->second);  // collision or orphan: the newer entry wins
      map_[h] = b;
      hashed_[b] = true;
      hash_[b] = h;
      parent_[b] = parent;
      parent_gen_[b] = pgen;
      std::copy(block.begin(), block.end(), tokens_.begin() + static_cast<ptrdiff_t>(b * bs));
    }
    t.prefix_hash = h;
    t.canon = canon;
    t.canon_gen = gen_[canon];
  }
}

void BlockManager::free_sequence(SeqId seq) {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  const auto& blocks = it->second.blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) release(*b);
  tables_.erase(it);
}

int BlockManager::freeable_by(std::span<const SeqId> seqs) const {
  std::vector<BlockId> touched;
  for (const SeqId s : seqs) {
    for (const BlockId b : table(s)) {
      if (scratch_[b]++ == 0) touched.push_back(b);
    }
  }
  int n = 0;
  for (const BlockId b : touched) {
    if (scratch_[b] == ref_[b]) ++n;
    scratch_[b] = 0;
  }
  return n;
}

void BlockManager::pin(BlockId b) {
  retain(b);
  pins_.push_back(b);
}

void BlockManager::unpin(BlockId b) {
  const auto it = std::find(pins_.rbegin(), pins_.rend(), b);
  if (it == pins_.rend()) throw std::logic_error("BlockManager::unpin: block not pinned");
  pins_.erase(std::next(it).base());
  release(b);
}

void BlockManager::release_pins() {
  for (const BlockId b : pins_) release(b);
  pins_.clear();
}

BlockId BlockManager::allocate() {
  BlockId b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (lru_head_ >= 0) {
    b = lru_head_;
    lru_remove(b);
    unhash(b);
  } else {
    return -1;
  }
  ++gen_[b];  // new content: cached children that named this block as parent go stale
  return b;
}

void BlockManager::retain(BlockId b) {
  if (ref_[b]++ == 0) {
    // Only cached blocks are ever retained from zero (free ones are reached
    // through allocate()), so this takes it off the eviction list.
    assert(in_lru_[b]);
    lru_remove(b);
  }
}

void BlockManager::release(BlockId b) {
  assert(ref_[b] > 0);
  if (--ref_[b] > 0) return;
  if (hashed_[b]) {
    lru_push_back(b);
  } else {
    free_.push_back(b);
  }
}

void BlockManager::unhash(BlockId b) {
  if (!hashed_[b]) return;
  const auto it = map_.find(hash_[b]);
  if (it != map_.end() && it->second == b) map_.erase(it);
  hashed_[b] = false;
  if (in_lru_[b]) {  // an unreferenced block that no longer caches anything is free
    lru_remove(b);
    free_.push_back(b);
  }
}

void BlockManager::lru_push_back(BlockId b) {
  lru_prev_[b] = lru_tail_;
  lru_next_[b] = -1;
  if (lru_tail_ >= 0) {
    lru_next_[lru_tail_] = b;
  } else {
    lru_head_ = b;
  }
  lru_tail_ = b;
  in_lru_[b] = true;
  ++lru_size_;
}

void BlockManager::lru_remove(BlockId b) {
  const BlockId p = lru_prev_[b], n = lru_next_[b];
  if (p >= 0) {
    lru_next_[p] = n;
  } else {
    lru_head_ = n;
  }
  if (n >= 0) {
    lru_prev_[n] = p;
  } else {
    lru_tail_ = p;
  }
  lru_prev_[b] = lru_next_[b] = -1;
  in_lru_[b] = false;
  --lru_size_;
}

std::string BlockManager::validate() const {
  const auto fail = [](const std::string& what, BlockId b) {
    return what + " (block " + std::to_string(b) + ")";
  };
  std::vector<int> refs(n_blocks_, 0);
  for (const auto& [seq, t] : tables_) {
    for (const BlockId b : t.blocks) {
      if (b < 0 || b >= n_blocks_) return "table of seq " + std::to_string(seq) + " lists a bad id";
      ++refs[b];
    }
    if (t.n_registered > static_cast<int>(t.blocks.size())) return "table registered past its end";
  }
  for (const BlockId b : pins_) ++refs[b];
  std::vector<int> in_free(n_blocks_, 0);
  for (const BlockId b : free_) {
    if (b < 0 || b >= n_blocks_) return "free list holds a bad id";
    if (in_free[b]++) return fail("block twice in the free list", b);
  }
  int lru_count = 0;
  for (BlockId b = lru_head_, prev = -1; b >= 0; prev = b, b = lru_next_[b]) {
    if (lru_prev_[b] != prev || !in_lru_[b]) return fail("LRU links broken", b);
    if (++lru_count > n_blocks_) return "LRU has a cycle";
  }
  if (lru_count != lru_size_) return "LRU size mismatch";
  int n_hashed = 0;
  for (BlockId b = 0; b < n_blocks_; ++b) {
    if (refs[b] != ref_[b]) {
      return fail("refcount " + std::to_string(ref_[b]) + " != references " + std::to_string(refs[b]), b);
    }
    if (hashed_[b]) {
      ++n_hashed;
      const auto it = map_.find(hash_[b]);
      if (it == map_.end() || it->second != b) return fail("hashed block missing from the map", b);
    }
    const bool used = ref_[b] > 0;
    const int states = (used ? 1 : 0) + (in_lru_[b] ? 1 : 0) + in_free[b];
    if (states != 1) return fail("block not in exactly one of used/cached/free", b);
    if (in_lru_[b] && !hashed_[b]) return fail("cached block without a hash", b);
    if (in_free[b] && hashed_[b]) return fail("free block still hashed", b);
  }
  if (n_hashed != static_cast<int>(map_.size())) return "hash map has entries for unhashed blocks";
  if (n_free() + n_cached() + n_used() != n_blocks_) return "free + cached + used != n_blocks";
  return {};
}

}  // namespace chatradio::engine
