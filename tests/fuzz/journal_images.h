// Valid journal images for the structured fuzz targets, and a record-level
// view of an image that can be edited and written back with fresh checksums.
//
// Design note. Random bytes never pass the xxh3 checksums, so a fuzzer fed
// raw files only ever exercises the first check of the reader. The
// structured targets instead start from images the Journal API itself wrote
// (BaseImages(): targets, AL swaps, freezes, commits, aborts, removals,
// resync requests, a checkpoint holding a frozen cycle, a seal, a partial
// last block), split them into records (SplitImage), let the input edit
// header fields and records, and re-frame them (JoinImage), so the edited
// bytes reach the replayer's semantic validators.
//
// Thread safety: BaseImages() is built once, on first use (thread-safe);
// the rest are plain functions on values.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tracker/journal.h"
#include "tracker/journal_format.h"

namespace blkrep::fuzz {

inline constexpr const char* kJournalPath = "/state/journal/vm100/disk0.journal";
inline constexpr const char* kJournalDir = "/state/journal/vm100";
inline constexpr std::uint64_t kVolumeBytes = 1 << 20;

// What the sealed base images record of their volume at Close (a regular
// file and a block device also have these device numbers).
inline constexpr std::int64_t kSealMtimeNs = 1700000000123456789;
inline constexpr std::uint64_t kSealSectorsWritten = 100;
inline constexpr const char* kSealBootId = "boot-1";
inline constexpr std::uint64_t kSealFileDev = 2049;
inline constexpr std::uint64_t kSealFileIno = 131;
inline constexpr std::uint64_t kSealDeviceRdev = 0x801;

// The volume and options the replay target opens journals with: a 1 MiB
// memory volume, 4 KiB blocks, 64 KiB extents (16 blocks), 4 AL slots, a
// 1 MiB cap.
tracker::VolumeDescriptor MemoryVolume(std::uint64_t size_bytes);
tracker::JournalOptions SmallOptions();

// A journal file as header + records. Only whole, well-framed records are
// kept; `tail` holds whatever followed the last one.
struct RecordImage {
  struct Rec {
    tracker::journal_format::RecordType type{};
    std::uint64_t sequence = 0;
    std::uint64_t epoch = 0;
    std::vector<std::byte> payload;
  };
  std::vector<std::byte> header;  // kHeaderBytes, checksum as found
  std::vector<Rec> records;
  std::vector<std::byte> tail;
};

// Splits a file; nullopt if it is shorter than a header.
std::optional<RecordImage> SplitImage(std::span<const std::byte> file);
// Frames every record with AppendRecord (fresh checksums), then appends the
// tail.
std::vector<std::byte> JoinImage(const RecordImage& image);

// Rewrites the header checksum over bytes 0..4087.
void FixHeaderChecksum(std::vector<std::byte>& header);
// Gives record i the sequence first_sequence + i (first_sequence from the
// header bytes).
void RenumberSequences(RecordImage& image);
// Gives each record the epoch the replayer expects from its position: the
// checkpoint's own epoch, +1 at each FREEZE_END outside a checkpoint, a
// checkpointed FREEZE_END's epoch clamped into [1, checkpoint epoch].
void FixEpochs(RecordImage& image);

// Deterministic journal images written through the Journal API (creation and
// seal times pinned), each a different mix of record types. Every record
// type occurs in at least one of them.
const std::vector<std::vector<std::byte>>& BaseImages();

}  // namespace blkrep::fuzz
