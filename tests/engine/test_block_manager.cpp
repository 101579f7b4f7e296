// BlockManager on its own: allocation, refcounts, prefix-cache keying, LRU
// eviction, collision safety, pins.
#include <gtest/gtest.h>

#include <vector>

#include "server/engine/block_manager.h"

namespace chatradio::engine {
namespace {

std::vector<int32_t> seq(std::initializer_list<int32_t> v) { return v; }

// Registers `tokens` as the fully computed content of a new sequence `id`.
void compute(BlockManager& bm, SeqId id, const std::vector<int32_t>& tokens) {
  bm.attach(id, {});
  ASSERT_TRUE(bm.grow(id, static_cast<int>(tokens.size())));
  bm.commit(id, tokens, static_cast<int>(tokens.size()));
  ASSERT_EQ(bm.validate(), "");
}

TEST(BlockManager, GrowIsAllOrNothingAndFreeReturnsEverything) {
  BlockManager bm(4, 4);
  bm.attach(1, {});
  ASSERT_TRUE(bm.grow(1, 9));  // 3 blocks
  EXPECT_EQ(bm.table(1).size(), 3u);
  EXPECT_EQ(bm.n_used(), 3);
  bm.attach(2, {});
  EXPECT_FALSE(bm.grow(2, 8));  // needs 2, 1 available
  EXPECT_TRUE(bm.table(2).empty());
  EXPECT_TRUE(bm.grow(2, 4));
  EXPECT_DOUBLE_EQ(bm.usage(), 1.0);
  EXPECT_EQ(bm.validate(), "");
  bm.free_sequence(1);
  bm.free_sequence(2);
  EXPECT_EQ(bm.n_free(), 4);  // nothing was committed, so nothing is cached
  EXPECT_EQ(bm.n_sequences(), 0);
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, ChainKeyedPrefixIsSharedAndCountedOnce) {
  BlockManager bm(8, 4);
  const auto a = seq({1, 2, 3, 4, 5, 6, 7, 8, 9, 10});  // 2 full blocks + 2 tokens
  compute(bm, 1, a);
  EXPECT_EQ(bm.lookup(a).size(), 2u);
  EXPECT_EQ(bm.lookup(seq({1, 2, 3, 4, 5, 6, 7, 99})).size(), 1u);  // diverges in block 1
  EXPECT_EQ(bm.lookup(seq({0, 2, 3, 4, 5, 6, 7, 8})).size(), 0u);   // diverges in block 0
  EXPECT_EQ(bm.lookup(seq({1, 2, 3})).size(), 0u);                  // no full block

  const auto hit = bm.lookup(a);
  bm.attach(2, hit);
  EXPECT_EQ(bm.ref_count(hit[0]), 2);
  EXPECT_EQ(bm.ref_count(hit[1]), 2);
  EXPECT_EQ(bm.validate(), "");

  bm.free_sequence(1);  // still used by 2
  EXPECT_EQ(bm.ref_count(hit[0]), 1);
  EXPECT_EQ(bm.n_cached(), 0);
  bm.free_sequence(2);  // now cached, not free
  EXPECT_EQ(bm.n_cached(), 2);
  EXPECT_EQ(bm.n_free(), 6);
  EXPECT_EQ(bm.lookup(a), hit);
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, EvictsLeastRecentlyUsedTailFirst) {
  BlockManager bm(4, 2);
  const auto a = seq({1, 2, 3, 4, 5, 6});  // 3 full blocks
  compute(bm, 1, a);
  bm.free_sequence(1);
  EXPECT_EQ(bm.n_cached(), 3);
  bm.attach(2, {});
  ASSERT_TRUE(bm.grow(2, 4));  // takes the free block, then evicts one cached
  EXPECT_EQ(bm.n_cached(), 2);
  EXPECT_EQ(bm.lookup(a).size(), 2u);  // the tail went first: the head prefix survives
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, DuplicateComputationKeepsTheFirstCachedCopy) {
  BlockManager bm(8, 4);
  const auto a = seq({1, 2, 3, 4, 5, 6, 7, 8});
  compute(bm, 1, a);
  compute(bm, 2, a);  // same content in other blocks: stays private
  const auto hit = bm.lookup(a);
  EXPECT_EQ(hit, bm.table(1));
  bm.free_sequence(2);
  EXPECT_EQ(bm.n_free(), 6);  // the private copies are free at once
  bm.free_sequence(1);
  EXPECT_EQ(bm.n_cached(), 2);
  EXPECT_EQ(bm.validate(), "");
}

// A key that ignores the prefix: block 1 of two different sequences collides
// whenever its own tokens are equal. The parent check must reject it.
uint64_t prefix_blind_hash(uint64_t, std::span<const int32_t> tokens) { return default_block_hash(0, tokens); }
uint64_t constant_hash(uint64_t, std::span<const int32_t>) { return 42; }

TEST(BlockManager, CollidingKeyWithDifferentPrefixIsNotAHit) {
  BlockManager bm(8, 4, prefix_blind_hash);
  const auto a = seq({1, 2, 3, 4, 5, 6, 7, 8});
  const auto b = seq({9, 9, 9, 9, 5, 6, 7, 8});  // same block 1, other block 0
  compute(bm, 1, a);
  compute(bm, 2, seq({9, 9, 9, 9}));
  EXPECT_EQ(bm.lookup(a).size(), 2u);
  const auto hb = bm.lookup(b);
  ASSERT_EQ(hb.size(), 1u);  // block 0 only: block 1's key matches a's, its parent does not
  EXPECT_EQ(hb[0], bm.table(2)[0]);
}

// A parent dropped from the cache by a key collision can be reallocated while
// its child stays cached. The child names the parent by id AND generation,
// so the block's new content never revalidates the old child.
TEST(BlockManager, ReusedParentIdDoesNotRevalidateItsOldChildren) {
  BlockManager bm(8, 2, prefix_blind_hash);
  compute(bm, 1, seq({1, 1, 5, 5}));
  const BlockId parent = bm.table(1)[0];
  bm.free_sequence(1);                    // both cached
  compute(bm, 2, seq({7, 7, 1, 1}));      // [1,1] under another prefix takes the key: parent dropped
  EXPECT_FALSE(bm.is_cached(parent));
  compute(bm, 3, seq({9, 9}));            // the dropped block is reused for other content
  ASSERT_EQ(bm.table(3)[0], parent);
  EXPECT_EQ(bm.lookup(seq({9, 9, 5, 5})).size(), 1u);  // [5,5] was computed after [1,1], not [9,9]
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, EverythingCollidingStillNeverReturnsWrongBlocks) {
  BlockManager bm(8, 4, constant_hash);
  const auto a = seq({1, 2, 3, 4, 5, 6, 7, 8});
  compute(bm, 1, a);
  EXPECT_EQ(bm.lookup(seq({5, 6, 7, 8, 1, 2, 3, 4})).size(), 0u);
  EXPECT_EQ(bm.lookup(seq({1, 2, 3, 5})).size(), 0u);
  // Only one entry per key survives; the lookup may miss but never lies.
  for (const BlockId b : bm.lookup(a)) EXPECT_EQ(b, bm.table(1)[0]);
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, EvictedPrefixIsNoLongerFound) {
  BlockManager bm(3, 2);
  const auto a = seq({1, 2, 3, 4});
  compute(bm, 1, a);
  bm.free_sequence(1);  // both cached; the head is most recent, so the tail goes first
  bm.attach(2, {});
  ASSERT_TRUE(bm.grow(2, 4));  // the free block + the evicted tail
  EXPECT_EQ(bm.lookup(a).size(), 1u);
  bm.free_sequence(2);
  bm.attach(3, {});
  ASSERT_TRUE(bm.grow(3, 6));  // everything, the head included
  EXPECT_EQ(bm.lookup(a).size(), 0u);
  bm.free_sequence(3);
  EXPECT_EQ(bm.n_free(), 3);
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, FreeableCountsOnlyBlocksHeldByTheGivenSequences) {
  BlockManager bm(8, 4);
  const auto a = seq({1, 2, 3, 4, 5, 6, 7, 8, 9});
  compute(bm, 1, a);
  bm.attach(2, bm.lookup(a));  // shares 2 blocks
  ASSERT_TRUE(bm.grow(2, 12));
  const std::vector<SeqId> one{1}, both{1, 2};
  EXPECT_EQ(bm.freeable_by(one), 1);   // its private last block
  EXPECT_EQ(bm.freeable_by(both), 4);  // 2 shared + 1 + 1 private
  bm.pin(bm.table(1)[0]);
  EXPECT_EQ(bm.freeable_by(both), 3);  // a pinned block survives
  bm.release_pins();
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, PinKeepsACachedBlockOutOfTheLru) {
  BlockManager bm(2, 2);
  compute(bm, 1, seq({1, 2}));
  const BlockId b = bm.table(1)[0];
  bm.free_sequence(1);
  EXPECT_EQ(bm.n_cached(), 1);
  bm.pin(b);
  EXPECT_EQ(bm.n_available(), 1);
  bm.attach(2, {});
  EXPECT_FALSE(bm.grow(2, 3));  // the pinned block cannot be evicted
  EXPECT_EQ(bm.validate(), "");
  bm.release_pins();
  EXPECT_EQ(bm.n_cached(), 1);
  EXPECT_TRUE(bm.grow(2, 3));
  EXPECT_EQ(bm.validate(), "");
}

TEST(BlockManager, DefaultHashSeparatesOrderPrefixAndLength) {
  const auto h = [](uint64_t p, std::vector<int32_t> v) { return default_block_hash(p, v); };
  EXPECT_NE(h(0, {1, 2}), h(0, {2, 1}));
  EXPECT_NE(h(0, {1, 2}), h(1, {1, 2}));
  EXPECT_NE(h(0, {1, 2, 0}), h(0, {1, 2}));
  EXPECT_NE(h(0, {0}), h(0, {}));
  EXPECT_EQ(h(7, {1, 2, 3}), h(7, {1, 2, 3}));
}

TEST(BlockManager, RejectsAnEmptyPool) {
  EXPECT_THROW(BlockManager(0, 16), std::invalid_argument);
  EXPECT_THROW(BlockManager(4, 0), std::invalid_argument);
}

}  // namespace
}  // namespace chatradio::engine
