// Recovery points: the receiver keeps the undo data of the last N cycles of
// a guest (Hyper-V Replica's recovery points), so the replica set can be
// read, or rolled back, as any of them committed it. docs/replica-format.md
// ("Recovery points") is the specification of the files in DIR/GUEST/.points/.
//
// Design note: undo, not snapshots. A staged cycle's apply overwrites only
// the blocks its index records name. Before the apply writes the first of
// them, the old contents of exactly those blocks (of every volume of the
// cycle) are copied into one undo file, .points/ID.undo, which is made
// durable (fdatasync, rename from ID.undo.tmp, fsync of .points/) before
// the replica is touched. The cost is the cycle's changed blocks, never the
// volume. Undo file ID holds what point ID had where the next point differs,
// and names that next point (next_point_id), so the files form a chain from
// the oldest point to the latest one, which is the replica itself. Point P
// of a volume reads each block from the oldest undo file at or after P that
// holds it, else from the replica.
//
// The apply stays an idempotent redo: only the session that made the cycle
// "apply pending" captures; a session that redoes the apply keeps the
// complete undo file of that attempt if there is one, and otherwise (a
// crash during the capture, or a cycle that kept no points) drops every
// point, since it cannot know which blocks the interrupted apply changed.
// A full cycle, an in-place resync, a replaced replica and a new job drop
// every point before anything touches a replica.
//
// Point ids come from a per-guest counter in .points/head, which also holds
// the latest point's id and commit time; it only grows, so an id never
// names two different replica sets. The head is written just before the
// state file commits the cycle, marked with the cycle's attempt, so a redo
// after a crash between the two keeps the id.
//
// Locking: the receiver's session holds DIR/GUEST/.lock throughout.
// ListRecoveryPoints takes no lock (every file is replaced atomically; a
// concurrent session may make it fail, then ask again). PointInTimeVolume
// must be used under the lock (LockGuest), RollbackToPoint takes it.
//
// Every byte read from .points/ passes DecodeUndoMeta or DecodePointsHead,
// and every undo block its hash, before it is used: a damaged file is a
// one-line kCorruption naming the file and the field, never a crash.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/file_block_device.h"
#include "core/file_system.h"
#include "core/status.h"
#include "receiver/guest_state.h"

namespace blkrep::receiver {

inline constexpr const char* kPointsDirName = ".points";
inline constexpr const char* kPointsHeadName = "head";
inline constexpr std::uint32_t kMaxKeptRecoveryPoints = 24;
// The metadata of an undo file is read into memory whole: at most this.
inline constexpr std::uint64_t kMaxUndoMetaBytes = std::uint64_t{1} << 30;
inline constexpr std::uint64_t kUndoFixedHeaderBytes = 64;

// One volume of a point.
struct PointVolume {
  std::string name;
  std::uint64_t epoch = 0;
  std::uint64_t size_bytes = 0;
  std::uint32_t block_size_bytes = 0;
};

struct RecoveryPoint {
  std::uint64_t id = 0;           // 0 only for a latest point committed before points were kept
  std::uint64_t commit_time = 0;  // epoch seconds; 0: unknown
  bool latest = false;            // the replica itself
  std::vector<PointVolume> volumes;
  std::uint64_t undo_bytes = 0;   // the undo file that keeps it; 0 for the latest
};

// ---- The files (docs/replica-format.md, "Recovery points").

struct PointsHead {
  std::uint64_t point_id = 0;      // the point the replicas hold; 0: none recorded
  std::uint64_t next_id = 1;       // the id the next point gets; only grows
  std::uint64_t commit_time = 0;   // of point_id
  std::uint32_t attempt = 0;       // the state's attempt of the cycle that wrote it; 0: none
  std::uint64_t rollback_to = 0;   // non-zero: a rollback to this point is under way
};
std::vector<std::byte> EncodePointsHead(const PointsHead& head);
// kCorruption ("points head: FIELD ...") unless `bytes` is exactly a head.
core::Result<PointsHead> DecodePointsHead(std::span<const std::byte> bytes);

struct UndoExtent {
  std::uint32_t volume = 0;  // index into UndoMeta::volumes
  std::uint64_t first_block = 0;
  std::uint64_t block_count = 0;
  // Filled by the decoder (and the encoder): where the extent's bytes are in
  // the file, and its first hash in UndoMeta::hashes.
  std::uint64_t data_offset = 0;
  std::uint64_t first_hash = 0;
};

struct UndoMeta {
  std::uint64_t point_id = 0;       // the point this file restores
  std::uint64_t next_point_id = 0;  // the point it was captured from (> point_id)
  std::uint64_t commit_time = 0;    // of point_id
  std::uint32_t attempt = 0;        // the attempt whose apply captured it
  std::uint32_t retain = 0;         // that cycle's recovery_points (1 .. 24)
  std::vector<PointVolume> volumes;  // every volume of point_id
  std::vector<UndoExtent> extents;   // by volume, then block; no overlap
  std::vector<std::uint64_t> hashes;  // xxh3 of each extent block's bytes, in order
  std::uint64_t meta_bytes = 0;      // header to checksum inclusive
  std::uint64_t data_bytes = 0;      // the extents' bytes after it
};
// Fills meta_bytes, data_bytes and the extents' data_offset/first_hash.
std::vector<std::byte> EncodeUndoMeta(UndoMeta& meta);
// The one gate for an undo file's metadata: `meta` is the file's first
// meta_bytes bytes (the header says how many), file_size_bytes the file's
// size. kCorruption ("undo file: FIELD ...") on any field out of range.
core::Result<UndoMeta> DecodeUndoMeta(std::span<const std::byte> meta, std::uint64_t file_size_bytes);

// ---- For the operator and the failover (the lead's promote/test-failover).

// Oldest first, the latest (the replica) last. kNotFound when the receiver
// holds nothing for the guest; kAborted while a cycle waits to be applied
// or a rollback did not finish; kCorruption naming a damaged file.
core::Result<std::vector<RecoveryPoint>> ListRecoveryPoints(const std::string& replica_dir,
                                                            const std::string& guest);

// The guest's lock, DIR/GUEST/.lock, as the receiver's sessions take it:
// kAborted ("guest G is being received by another session") when held.
core::Result<std::unique_ptr<core::FileLock>> LockGuest(const std::string& replica_dir, const std::string& guest);

struct BlockRange {
  std::uint64_t first = 0;
  std::uint64_t count = 0;
};

// One volume as a point had it, read-only. REQUIRES: the caller holds
// LockGuest for as long as it reads (no session may change the replica).
class PointInTimeVolume {
 public:
  static core::Result<std::unique_ptr<PointInTimeVolume>> Open(const std::string& replica_dir,
                                                               const std::string& guest, const std::string& volume,
                                                               std::uint64_t point_id);
  std::uint64_t size_bytes() const { return size_bytes_; }
  std::uint32_t block_size_bytes() const { return block_size_bytes_; }
  // Any range inside size_bytes(); kOutOfRange outside, kCorruption when an
  // undo block does not match its hash.
  core::Status Read(std::uint64_t offset_bytes, std::span<std::byte> out);
  // The blocks where the point differs from the replica (or may: every
  // block a later cycle overwrote), ascending and merged; none for the
  // latest point.
  std::vector<BlockRange> ChangedBlocks() const;
 private:
  struct Source {
    std::string path;
    std::unique_ptr<core::File> file;
    UndoMeta meta;
    std::vector<std::size_t> extents;  // of this volume, in block order
  };
  PointInTimeVolume() = default;
  core::Status ReadBlock(std::uint64_t block, std::vector<std::byte>& buffer);

  std::string name_;
  std::uint64_t size_bytes_ = 0;
  std::uint32_t block_size_bytes_ = 0;
  std::vector<Source> sources_;  // the point's undo file first, then newer ones
  std::unique_ptr<core::FileBlockDevice> replica_;
};

// Rewrites every replica of the guest to point `point_id` (and a regular
// file to its size), sets the committed epochs to the point's and drops the
// newer points. Takes the guest lock. Crash-safe as a redo: the head first
// records the rollback, the state marks the volumes incomplete, the undo
// chain is written newest to oldest, then the state commits the point's
// epochs and the head the point; a crash anywhere leaves either the old
// replicas, or volumes the state calls incomplete (a session then resyncs
// them), or a finished state with the head's mark still set — in the last
// two cases running RollbackToPoint again with the same id finishes it.
core::Status RollbackToPoint(const std::string& replica_dir, const std::string& guest, std::uint64_t point_id);
// The same; REQUIRES: the caller holds LockGuest.
core::Status RollbackToPointLocked(const std::string& replica_dir, const std::string& guest, std::uint64_t point_id);

// ---- For the receiver's apply (receiver.cc).

// A range of blocks an apply writes.

// What PrepareApply decided; handed to CommitHead and Retain.
struct PointsApply {
  bool write_head = false;
  PointsHead head;          // to write at the commit
  std::uint32_t retain = 0;  // points to keep after the commit
};

// Called before the apply of the pending cycle of `state` writes anything.
// `retain`: the cycle's recovery_points in the session that validated it;
// nullopt in a session that redoes the apply. `ranges_of` gives the
// merged block ranges the apply writes to an in-cycle volume (staged
// cycles). Captures the undo file, or keeps the one a crashed apply
// captured, or drops every point; see the design note.
core::Status PrepareApply(core::FileSystem& fs, const std::string& replica_dir, const std::string& guest,
                          const GuestState& state, std::optional<std::uint32_t> retain,
                          const std::function<core::Result<std::vector<BlockRange>>(const VolumeState&)>& ranges_of,
                          PointsApply* out);
// Just before the state file commits: the head names the new point.
core::Status CommitHead(core::FileSystem& fs, const std::string& guest_dir, const PointsApply& apply);
// After the commit: keeps the newest `apply.retain` points, removes the rest.
core::Status Retain(core::FileSystem& fs, const std::string& guest_dir, const PointsApply& apply);
// Removes every undo file (oldest first; durable) and a rollback mark; the
// head's counter stays. Nothing to do when there is no .points/.
core::Status DropAllPoints(core::FileSystem& fs, const std::string& guest_dir);

}  // namespace blkrep::receiver
