// The journal's on-disk format: constants, the file header, the record
// framing and the payload of every record type. docs/journal-format.md is
// the specification; this header only names its constants.
//
// Every decoder here is a validator: it takes untrusted bytes, checks every
// length against what remains before it reads, and returns kCorruption with
// a message naming what was wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace blkrep::tracker::journal_format {

// "BLKRJNL1" as bytes.
inline constexpr std::uint64_t kFileMagic = 0x314C4E4A524B4C42ULL;
inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::size_t kHeaderBytes = 4096;
// "BJRC" as bytes.
inline constexpr std::uint32_t kRecordMagic = 0x43524A42U;
inline constexpr std::size_t kRecordHeaderBytes = 48;
inline constexpr std::size_t kRecordAlignmentBytes = 8;
inline constexpr std::size_t kMaxPayloadBytes = (1U << 20) + 4096;
// A bits record covers at most this many blocks (1 MiB of raw bitmap).
inline constexpr std::uint64_t kMaxBitsRecordBlocks = std::uint64_t{1} << 23;
inline constexpr std::uint32_t kMinBlockSizeBytes = 4096;
inline constexpr std::uint32_t kMaxBlockSizeBytes = 1U << 20;
inline constexpr std::uint32_t kMaxExtentSizeBytes = 64U << 20;
inline constexpr std::uint32_t kMaxAlSlots = 65536;
inline constexpr std::uint32_t kMaxTargets = 64;
inline constexpr std::size_t kMaxNameBytes = 64;
inline constexpr std::size_t kMaxReasonBytes = 1024;
inline constexpr std::size_t kMaxPathBytes = 1024;
inline constexpr std::uint64_t kMaxVolumeSizeBytes = std::uint64_t{1} << 60;
inline constexpr std::uint64_t kMinCapBytes = 64 * 1024;
inline constexpr std::uint64_t kNoExtent = ~std::uint64_t{0};
inline constexpr std::uint32_t kAllTargets = 0xFFFFFFFFU;

// Header flags.
inline constexpr std::uint32_t kHeaderFlagResyncRequired = 1U << 0;

struct FileHeader {
  std::uint32_t flags = 0;
  std::uint32_t block_size_bytes = 0;
  std::uint64_t volume_size_bytes = 0;
  std::uint32_t extent_size_bytes = 0;
  std::uint32_t al_slots = 0;
  std::uint64_t cap_bytes = 0;
  std::uint64_t first_sequence = 0;
  std::uint64_t generation = 0;
  std::int64_t created_unix_ns = 0;
  std::uint8_t volume_kind = 0;  // core::VolumeIdentity::Kind
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t rdev = 0;
  std::string guest;
  std::string volume_name;
  std::string volume_path;
  std::string probe_type;
  std::string uuid;
  std::string ptuuid;
};

// Encodes to exactly kHeaderBytes. REQUIRES: strings within their fields.
std::vector<std::byte> EncodeHeader(const FileHeader& header);
core::Result<FileHeader> DecodeHeader(std::span<const std::byte> bytes);

enum class RecordType : std::uint8_t {
  kCheckpointBegin = 1,
  kCheckpointEnd = 2,
  kTarget = 3,
  kTargetRemove = 4,
  kBits = 5,
  kAlSwap = 6,
  kFreezeBegin = 7,
  kFreezeEnd = 8,
  kCommit = 9,
  kAbort = 10,
  kResyncRequired = 11,
  kSeal = 12,
};
inline constexpr std::uint8_t kMaxRecordType = 12;
const char* RecordTypeName(RecordType type);

// Bytes a record with this payload occupies, header and padding included.
std::size_t RecordBytes(std::size_t payload_bytes);
// Appends one framed record. REQUIRES: payload.size() <= kMaxPayloadBytes.
void AppendRecord(std::vector<std::byte>& out, RecordType type,
                  std::uint64_t sequence, std::uint64_t epoch,
                  std::span<const std::byte> payload);

struct Record {
  RecordType type{};
  std::uint64_t sequence = 0;
  std::uint64_t epoch = 0;
  std::uint64_t offset_bytes = 0;  // of the record header in the file
  std::uint64_t size_bytes = 0;    // header + payload + padding
  std::span<const std::byte> payload;
};

// Reads framed records from a file image, telling apart a clean end, a torn
// tail (the writer died in the middle: dropped, not corruption) and
// corruption (a bad record with a valid record after it).
class RecordScanner {
 public:
  enum class Outcome : std::uint8_t { kRecord, kEnd, kTornTail, kCorrupt };

  // `file` must outlive the scanner.
  RecordScanner(std::span<const std::byte> file, std::uint64_t start_offset,
                std::uint64_t first_sequence)
      : file_(file), offset_(start_offset), next_sequence_(first_sequence) {}

  Outcome Next(Record* record);
  // For kTornTail / kCorrupt: what was wrong and where.
  const std::string& error() const { return error_; }
  // Offset just past the last good record.
  std::uint64_t good_end_offset() const { return offset_; }

 private:
  // Why the bytes at offset_ are not a good record, or empty if they are.
  std::string Check(Record* record) const;
  bool ValidRecordFollows(std::uint64_t after_offset) const;

  std::span<const std::byte> file_;
  std::uint64_t offset_;
  std::uint64_t next_sequence_;
  std::string error_;
};

// ---- Payloads -------------------------------------------------------------

enum class SetKind : std::uint8_t { kBase = 0, kLive = 1, kFrozen = 2 };
enum class CycleMode : std::uint8_t { kIncremental = 0, kFull = 1, kResync = 2 };

inline constexpr std::uint8_t kTargetFlagNeedsFull = 1U << 0;
inline constexpr std::uint8_t kTargetFlagNeedsResync = 1U << 1;
inline constexpr std::uint8_t kCheckpointFlagBaseUnknown = 1U << 0;

struct CheckpointBegin {
  std::uint32_t target_count = 0;
  std::uint32_t flags = 0;  // kCheckpointFlag*
  std::string base_reason;  // why the base set is unknown, if it is
};
struct CheckpointEnd {
  std::uint32_t record_count = 0;  // records of the checkpoint, both ends included
};
struct TargetRecord {
  std::uint32_t target_id = 0;
  std::uint8_t flags = 0;  // kTargetFlag*
  std::uint64_t last_cycle = 0;
  std::string name;
  std::string resync_reason;
};
struct TargetRemove {
  std::uint32_t target_id = 0;
};
struct Bits {
  SetKind kind = SetKind::kBase;
  std::uint32_t target_id = 0;
  std::uint64_t first_block = 0;
  std::uint64_t block_count = 0;
  // Decoded form: runs relative to nothing (absolute block numbers).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
};
struct AlSwap {
  std::uint32_t slot = 0;
  std::uint64_t new_extent = kNoExtent;
  std::uint64_t old_extent = kNoExtent;
  struct SetBits {
    SetKind kind = SetKind::kBase;
    std::uint32_t target_id = 0;
    std::vector<std::uint64_t> words;  // bit i = block (old_extent start + i)
  };
  std::uint32_t words_per_set = 0;
  std::vector<SetBits> sets;
};
struct FreezeBegin {
  std::uint32_t target_id = 0;
  CycleMode mode = CycleMode::kIncremental;
};
struct FreezeEnd {
  std::uint32_t target_id = 0;
  std::uint64_t frozen_blocks = 0;
};
struct CycleEnd {  // kCommit and kAbort
  std::uint32_t target_id = 0;
  std::uint64_t epoch = 0;
};
struct ResyncRequired {
  std::uint32_t target_id = kAllTargets;
  std::string reason;
};
struct Seal {
  std::int64_t sealed_unix_ns = 0;
  std::uint8_t volume_kind = 0;
  std::uint64_t size_bytes = 0;
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t rdev = 0;
  std::int64_t mtime_ns = 0;
  std::uint64_t sectors_written = 0;
  std::string boot_id;
  std::string probe_type;
  std::string uuid;
  std::string ptuuid;
};

std::vector<std::byte> Encode(const CheckpointBegin& p);
std::vector<std::byte> Encode(const CheckpointEnd& p);
std::vector<std::byte> Encode(const TargetRecord& p);
std::vector<std::byte> Encode(const TargetRemove& p);
std::vector<std::byte> Encode(const AlSwap& p);
std::vector<std::byte> Encode(const FreezeBegin& p);
std::vector<std::byte> Encode(const FreezeEnd& p);
std::vector<std::byte> Encode(const CycleEnd& p);
std::vector<std::byte> Encode(const ResyncRequired& p);
std::vector<std::byte> Encode(const Seal& p);
// Encodes blocks [first_block, first_block + block_count) of `words` (the
// raw bitmap layout of DirtyBitmap) as runs or raw words, whichever is
// smaller. REQUIRES: block_count <= kMaxBitsRecordBlocks.
std::vector<std::byte> EncodeBits(SetKind kind, std::uint32_t target_id,
                                  std::uint64_t first_block,
                                  std::uint64_t block_count,
                                  const std::vector<std::uint64_t>& words);

core::Result<CheckpointBegin> DecodeCheckpointBegin(std::span<const std::byte> b);
core::Result<CheckpointEnd> DecodeCheckpointEnd(std::span<const std::byte> b);
core::Result<TargetRecord> DecodeTarget(std::span<const std::byte> b);
core::Result<TargetRemove> DecodeTargetRemove(std::span<const std::byte> b);
core::Result<Bits> DecodeBits(std::span<const std::byte> b);
core::Result<AlSwap> DecodeAlSwap(std::span<const std::byte> b);
core::Result<FreezeBegin> DecodeFreezeBegin(std::span<const std::byte> b);
core::Result<FreezeEnd> DecodeFreezeEnd(std::span<const std::byte> b);
core::Result<CycleEnd> DecodeCycleEnd(std::span<const std::byte> b);
core::Result<ResyncRequired> DecodeResyncRequired(std::span<const std::byte> b);
core::Result<Seal> DecodeSeal(std::span<const std::byte> b);

// A name of a guest, volume or target: 1..64 bytes of [A-Za-z0-9._-], not
// starting with '.' or '-'.
bool IsValidName(std::string_view name);

}  // namespace blkrep::tracker::journal_format
