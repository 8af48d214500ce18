// Staging of one volume's blocks of a cycle: DIR/GUEST/.staging/NAME.data
// and DIR/GUEST/.staging/NAME.index. docs/replica-format.md ("The staging
// files") is the specification of their bytes and of what is staged.
//
// Design note: what is durable when. The data file holds the received blocks
// of an incremental cycle, one per slot; full and resync cycles write into
// the replica itself and leave it empty. The index is an append-only log of
// checksummed records, appended only after the data (or the in-place replica
// writes) they describe were made durable, so a durable record always
// describes durable bytes. Slots are handed out in increasing order and a
// slot named by a valid record is never written again, so a record's data
// stays what its hashes say. The first record that is not valid (torn or
// corrupt, wherever it is) ends the log; the next writer cuts the rest off
// (TruncateToValid) before appending.
//
// Thread safety: one thread per StagingFiles.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/file_system.h"
#include "core/status.h"

namespace blkrep::receiver {

inline constexpr std::uint64_t kNoSlot = ~std::uint64_t{0};
inline constexpr std::uint64_t kMaxHashesPerRecord = 65536;
// A data record's first_slot is kNoSlot or below this (so slot x block
// size cannot overflow); docs/replica-format.md, "Reading".
inline constexpr std::uint64_t kSlotLimit = std::uint64_t{1} << 43;

enum class RecordKind : std::uint8_t { kData = 1, kZero = 2, kKeep = 3, kDrop = 4 };

struct IndexRecord {
  RecordKind kind = RecordKind::kData;
  std::uint32_t attempt = 0;
  std::uint64_t first_block = 0;
  std::uint64_t block_count = 0;
  std::uint64_t first_slot = kNoSlot;
  std::vector<std::uint64_t> hashes;  // data and keep: one per block
};

// Whether blocks [first_block, first_block + block_count) of `record` lie
// inside a volume of volume_blocks blocks (no overflow).
bool RecordInVolume(const IndexRecord& record, std::uint64_t volume_blocks);

// Appends the encoding of `record` to `out`.
// REQUIRES: hashes.size() == block_count for data/keep (<= kMaxHashesPerRecord), empty otherwise.
void EncodeIndexRecord(const IndexRecord& record, std::vector<std::byte>& out);

// A block staged by an earlier attempt: its content hash and where it is.
struct StagedBlock {
  std::uint64_t block = 0;
  std::uint64_t hash = 0;
  std::uint64_t slot = kNoSlot;  // kNoSlot: in the replica (in-place staging)
};
static_assert(sizeof(StagedBlock) == 24);

// Sorted by block, one entry per block.
class StagedBlocks {
 public:
  StagedBlocks() = default;
  explicit StagedBlocks(std::vector<StagedBlock> sorted) : blocks_(std::move(sorted)) {}
  const StagedBlock* Find(std::uint64_t block) const;
  // Whether any block of [first, first + count) is staged.
  bool AnyIn(std::uint64_t first, std::uint64_t count) const;
  const std::vector<StagedBlock>& blocks() const { return blocks_; }
  std::size_t size() const { return blocks_.size(); }

 private:
  std::vector<StagedBlock> blocks_;
};

// One bit per block of a volume.
class BlockBitmap {
 public:
  explicit BlockBitmap(std::uint64_t block_count = 0)
      : block_count_(block_count), words_((block_count + 63) / 64) {}
  bool Test(std::uint64_t block) const { return (words_[block / 64] >> (block % 64)) & 1; }
  void Set(std::uint64_t block) { words_[block / 64] |= std::uint64_t{1} << (block % 64); }
  // The first set block in [first, first + count), or kNoSlot.
  // REQUIRES: the range lies inside the bitmap.
  std::uint64_t FirstSetIn(std::uint64_t first, std::uint64_t count) const;
  void SetRange(std::uint64_t first, std::uint64_t count);
  std::uint64_t block_count() const { return block_count_; }

 private:
  std::uint64_t block_count_;
  std::vector<std::uint64_t> words_;
};

// The staging files of one volume. Owns its open files.
class StagingFiles {
 public:
  // Creates empty files for a new staging (any old ones are replaced) and
  // makes them and the directory entries durable. kInvalidArgument when
  // block_size_bytes is not a power of two in the wire's caps.
  static core::Result<std::unique_ptr<StagingFiles>> Create(core::FileSystem& fs, const std::string& staging_dir,
                                                            const std::string& name, std::uint64_t staging_id,
                                                            std::uint32_t block_size_bytes);
  // Opens the files of an existing staging and scans the index to its last
  // valid record (every field of a record is checked before it is used). kNotFound
  // when a file is missing; kCorruption when block_size_bytes is not a
  // power of two in the wire's caps, or the header is bad or names another
  // staging_id or block size.
  static core::Result<std::unique_ptr<StagingFiles>> Open(core::FileSystem& fs, const std::string& staging_dir,
                                                          const std::string& name, std::uint64_t staging_id,
                                                          std::uint32_t block_size_bytes);
  // Removes both files of `name` (missing ones are fine).
  static core::Status Remove(core::FileSystem& fs, const std::string& staging_dir, const std::string& name);

  // The blocks staged by attempts before `attempt_limit`
  // (docs/replica-format.md, "Attempts, and what is staged"). kCorruption
  // when a record that counts lies outside a volume of volume_blocks blocks.
  // Memory is O(records in the index), not O(volume_blocks): any
  // volume_blocks is safe.
  core::Result<StagedBlocks> LoadCandidates(std::uint32_t attempt_limit, std::uint64_t volume_blocks);
  // Calls `fn` for every valid record, in log order.
  core::Status ForEachRecord(const std::function<core::Status(const IndexRecord&)>& fn);
  // Cuts off a torn tail after the last valid record, durably.
  core::Status TruncateToValid();
  // Bytes of valid records (with the header), and whether a torn tail follows.
  std::uint64_t valid_bytes() const { return valid_bytes_; }
  bool has_torn_tail() const { return index_size_bytes_ != valid_bytes_; }
  // The first slot after every slot a valid data record names.
  std::uint64_t next_slot() const { return next_slot_; }

  core::Status WriteData(std::uint64_t slot, std::span<const std::byte> data);
  core::Status ReadData(std::uint64_t slot, std::span<std::byte> out);

  // Queues a record; it is written by the next Flush.
  void AddRecord(const IndexRecord& record);
  bool HasPending() const { return !pending_.empty() || data_dirty_; }
  // Makes queued records durable: fdatasync of the data file if it was
  // written, then the records are appended and the index fdatasync'ed.
  // REQUIRES: in-place writes the records describe are durable already.
  core::Status Flush();

 private:
  StagingFiles(std::string index_path, std::unique_ptr<core::File> index, std::unique_ptr<core::File> data,
               std::uint32_t block_size_bytes);
  core::Status Scan();
  // Reads the record at `offset`; kEndOfData for a torn or corrupt record.
  core::Result<IndexRecord> ReadRecord(std::uint64_t offset, std::uint64_t* next_offset);

  std::string index_path_;
  std::unique_ptr<core::File> index_;
  std::unique_ptr<core::File> data_;
  std::uint32_t block_size_bytes_;
  std::uint64_t index_size_bytes_ = 0;
  std::uint64_t valid_bytes_ = 0;
  std::uint64_t next_slot_ = 0;
  std::vector<std::uint64_t> record_offsets_;
  std::vector<std::byte> pending_;
  std::vector<std::uint64_t> pending_offsets_;  // of each queued record in pending_
  std::uint64_t pending_next_slot_ = 0;
  bool data_dirty_ = false;
};

}  // namespace blkrep::receiver
