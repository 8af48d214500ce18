// Diverged blocks: blocks of a replica that changed after the cycle its
// state file says it holds — what an old source (demoted after a failover
// or migration, `blkrep demote`) wrote that never reached the new source.
//
// Design note. When a job is reversed, the old source becomes the receiver
// of the promoted replica. Its volumes hold the last common cycle plus the
// writes it made after it, which its journal knows (the job's dirty set).
// `demote` writes those blocks to DIR/GUEST/NAME.diverged next to the state
// file (which says: committed at the common cycle). At HELLO the receiver
// reports them (ReplicaState.diverged, docs/wire-protocol.md) and the
// shipper marks them dirty on its side before it freezes, so the reverse
// cycle ships the union of both sides' changes since the common cycle and
// nothing more; the commit of any cycle of the volume removes the file. A
// shipper that cannot take them is told the replica is at no cycle (a
// resync): never an incremental that would leave them different.
// docs/replica-format.md ("Diverged blocks") specifies the bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/file_system.h"
#include "core/status.h"

namespace blkrep::receiver {

using BlockRanges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;  // [first, count], sorted, disjoint

struct DivergedBlocks {
  std::uint32_t block_size_bytes = 0;
  std::uint64_t block_count = 0;
  BlockRanges ranges;
};

// DIR/GUEST/NAME.diverged.
std::string DivergedPath(const std::string& guest_dir, const std::string& volume);

std::vector<std::byte> EncodeDiverged(const DivergedBlocks& d);
// kCorruption naming the field when the bytes are not a diverged file whose
// ranges are sorted, disjoint, non-empty and inside block_count.
core::Result<DivergedBlocks> DecodeDiverged(std::span<const std::byte> bytes);

// kNotFound when there is none.
core::Result<DivergedBlocks> ReadDiverged(core::FileSystem& fs, const std::string& guest_dir,
                                          const std::string& volume);
// Written whole and durably (tmp, fdatasync, rename, fsync of the directory).
core::Status WriteDiverged(core::FileSystem& fs, const std::string& guest_dir, const std::string& volume,
                           const DivergedBlocks& d);
// Removes it if present, durably.
core::Status RemoveDiverged(core::FileSystem& fs, const std::string& guest_dir, const std::string& volume);

// At most `max_ranges` ranges covering every block of `ranges` (a superset:
// the smallest gaps are filled first).
BlockRanges CoarsenRanges(const BlockRanges& ranges, std::size_t max_ranges);

}  // namespace blkrep::receiver
