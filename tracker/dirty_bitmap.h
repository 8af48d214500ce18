// DirtyBitmap: one bit per block, the in-memory form of every dirty set.
//
// Memory is exactly ceil(block_count / 64) words: 2 MiB for a 1 TiB volume at
// 64 KiB blocks. Not thread-safe; the journal guards its bitmaps.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace blkrep::tracker {

class DirtyBitmap {
 public:
  DirtyBitmap() = default;
  explicit DirtyBitmap(std::uint64_t block_count, bool all_set = false);

  std::uint64_t block_count() const { return block_count_; }
  bool Test(std::uint64_t block) const {
    return (words_[block >> 6] >> (block & 63)) & 1U;
  }
  // REQUIRES: first + count <= block_count().
  void SetRange(std::uint64_t first_block, std::uint64_t count_blocks);
  void ClearRange(std::uint64_t first_block, std::uint64_t count_blocks);
  void SetAll() { SetRange(0, block_count_); }
  void ClearAll();
  // REQUIRES: other.block_count() == block_count().
  void Or(const DirtyBitmap& other);
  std::uint64_t Count() const;
  bool Empty() const;
  // Maximal runs of set bits as {first_block, count_blocks}, in order.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> Runs() const;
  // Calls fn(first, count) for each maximal run inside [begin, end).
  void ForEachRun(std::uint64_t begin_block, std::uint64_t end_block,
                  const std::function<void(std::uint64_t, std::uint64_t)>& fn) const;
  // Changes the size; new blocks are set when `set_new` (a grown volume's
  // new blocks were never replicated).
  void Resize(std::uint64_t block_count, bool set_new);

  // Raw words for encoding: bit (b & 63) of word (b >> 6) is block b.
  const std::vector<std::uint64_t>& words() const { return words_; }
  // 64 bits starting at `first_block` (any alignment); bits past the end are 0.
  std::uint64_t Word(std::uint64_t first_block) const;
  // ORs `bits` into the 64 blocks starting at first_block (bits past the end
  // are ignored).
  void OrWord(std::uint64_t first_block, std::uint64_t bits);

  std::uint64_t MemoryBytes() const { return words_.capacity() * sizeof(std::uint64_t); }
  bool operator==(const DirtyBitmap& other) const = default;

 private:
  void ClearTail();

  std::uint64_t block_count_ = 0;
  std::vector<std::uint64_t> words_;
};

}  // namespace blkrep::tracker
