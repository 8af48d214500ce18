// Journal: which blocks of one volume changed, kept crash-safe (DESIGN.md,
// "The journal"; the byte format is docs/journal-format.md).
//
// Design note. Like DRBD, the journal records *which* blocks changed, never
// the data. In memory it holds one dirty bitmap per target (blocks changed
// since that target's last committed cycle), a base bitmap (blocks changed
// since tracking began, reported while there is no target), per target the
// frozen set of a cycle in progress, and an activity log (AL) of hot extents.
// On disk it is one append-only file of checksummed records that starts with
// a checkpoint of the whole state.
//
// Invariant 1 (no lost change) holds because MarkDirty returns only once the
// written blocks are covered durably: either their extent is in the on-disk
// AL (an AL_SWAP record made durable before the first write into a cold
// extent; writes into hot extents cost nothing), or their bits were written
// in a durable record. Recovery takes dirty = persisted bits ∪ every block of
// every AL extent. Evicting an extent from the AL persists its bits in the
// same record that reuses its slot.
//
// Invariant 3: journal trouble never fails MarkDirty. A failed journal write,
// or a journal that cannot fit under its cap, puts the journal in degraded
// mode: tracking carries on in memory, every target is marked
// resync-required, the header's resync flag is written in place (best
// effort) and later records are not written.
//
// Thread safety: all methods are thread-safe. MarkDirty's fast path (every
// extent hot) takes one mutex and does no I/O; the slow path serializes on
// the log mutex, which is always taken before the state mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/block_device.h"
#include "core/file_system.h"
#include "core/status.h"
#include "tracker/dirty_bitmap.h"
#include "tracker/journal_format.h"

namespace blkrep::tracker {

using CycleMode = journal_format::CycleMode;
const char* CycleModeName(CycleMode mode);

struct JournalOptions {
  // Used when the journal is created; an existing journal keeps its own
  // geometry. 0 means the default (64 KiB) or the existing journal's size.
  std::uint32_t block_size_bytes = 0;
  std::uint32_t extent_size_bytes = 4U << 20;
  std::uint32_t al_slots = 1024;
  // The journal's size cap. 0: max(64 MiB, 16 raw bitmaps of the volume).
  // A checkpoint must fit in half of it, or the journal overflows.
  std::uint64_t cap_bytes = 0;
  // Called (from the thread that met the problem) when the journal degrades
  // to resync-required. Default: a "blkrep: warning:" line on stderr.
  std::function<void(const std::string&)> on_degraded;
};

inline constexpr std::uint32_t kDefaultBlockSizeBytes = 64U << 10;

// The volume a journal tracks.
struct VolumeDescriptor {
  std::string guest;
  std::string name;
  std::string path;
  core::VolumeIdentity identity;  // as of now
};

// A cycle's point-in-time dirty set: the blocks to ship for `target`.
struct FrozenCycle {
  std::string target;
  std::uint64_t epoch = 0;
  CycleMode mode = CycleMode::kIncremental;
  DirtyBitmap blocks;
};

struct TargetReport {
  std::string name;
  std::uint64_t dirty_blocks = 0;  // live ∪ frozen
  DirtyBitmap dirty;
  std::uint64_t last_cycle = 0;    // epoch of the last committed cycle, 0 if none
  bool needs_full = false;
  bool resync_required = false;
  std::string resync_reason;
  std::optional<std::uint64_t> frozen_epoch;
};

// What the journal holds, as `blkrep journal inspect` reports it.
struct JournalReport {
  std::string path;
  std::string guest;
  std::string volume_name;
  std::string volume_path;
  std::uint64_t volume_size_bytes = 0;
  std::uint32_t block_size_bytes = 0;
  std::uint32_t extent_size_bytes = 0;
  std::uint32_t al_slots = 0;
  std::uint64_t cap_bytes = 0;
  std::uint64_t journal_bytes = 0;
  std::uint64_t generation = 0;
  std::uint64_t epoch = 0;
  bool clean_close = false;
  bool resync_required = false;
  std::string resync_reason;
  // Set when a torn tail was dropped (not corruption): what was dropped.
  std::string torn_tail;
  std::vector<std::uint64_t> hot_extents;
  // Blocks changed since the oldest cycle any target still needs, or since
  // tracking began when there is no target.
  DirtyBitmap dirty;
  // Blocks changed since tracking began (what `dirty` is without targets).
  DirtyBitmap since_tracking_began;
  std::vector<TargetReport> targets;
};

class Journal {
 public:
  // Opens (recovering) or creates the journal at `path` for `volume`, checks
  // the volume against what the journal recorded, and starts a new journal
  // generation. Problems with the journal or the volume's history never make
  // Open fail: they set resync-required with a reason. Open fails only when
  // the journal cannot be written at all, on bad arguments, or (kAborted)
  // when another process holds the journal: it is locked (`path`.lock)
  // for the Journal's lifetime.
  static core::Result<std::unique_ptr<Journal>> Open(core::FileSystem& fs,
                                                     const std::string& path,
                                                     const VolumeDescriptor& volume,
                                                     const JournalOptions& options);

  // Recovers the journal at `path` into a report without writing anything.
  // kNotFound if there is none; a corrupt journal still yields a report
  // (resync_required with the reason).
  static core::Result<JournalReport> Read(core::FileSystem& fs, const std::string& path);

  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Records that [offset, offset + length) is about to be written, trimmed or
  // zeroed. Returns once that is durable (or the journal is degraded and the
  // change is covered by resync-required). kOutOfRange for a range outside
  // the volume; never fails otherwise.
  core::Status MarkDirty(std::uint64_t offset_bytes, std::uint64_t length_bytes);

  // Adds a replication target; its first cycle will be full.
  core::Status AddTarget(const std::string& name);
  core::Status RemoveTarget(const std::string& name);
  // Freezes the target's dirty set into a new epoch: writes from now on go
  // to the next cycle. Fails if a cycle is already frozen for the target, or
  // if the freeze cannot be made durable.
  core::Result<FrozenCycle> Freeze(const std::string& target);
  // The cycle of `epoch` reached the target: its blocks are clean for it.
  core::Status Commit(const std::string& target, std::uint64_t epoch);
  // The cycle of `epoch` failed: its blocks are dirty again.
  core::Status Abort(const std::string& target, std::uint64_t epoch);
  // Marks one target (or every target, for an empty name) resync-required.
  core::Status RequireResync(const std::string& target, const std::string& reason);
  // For a journal just created (no target, no cycle): makes `name` a
  // target whose last committed cycle is `epoch`, with `dirty` changed since
  // (the journal's epoch becomes `epoch`, so its next cycle is epoch + 1).
  // What `blkrep promote` uses to make a replica a source that continues the
  // job's numbering. Durable (a checkpoint) when it returns.
  core::Status SeedTarget(const std::string& name, std::uint64_t epoch, const DirtyBitmap& dirty);
  // Writes a checkpoint now (compaction).
  core::Status Checkpoint();
  // Writes a final checkpoint and the clean-close seal with the volume's
  // identity. REQUIRES: the volume is flushed and no write is in flight. No
  // call other than Report() may follow.
  core::Status Close(const core::VolumeIdentity& final_identity);

  JournalReport Report() const;
  bool degraded() const;
  std::uint64_t block_count() const;
  std::uint32_t block_size_bytes() const;
  // Bytes of memory held for tracking state (bitmaps, AL maps).
  std::uint64_t MemoryBytes() const;

  struct State;  // defined in journal.cc

 private:
  Journal(core::FileSystem& fs, std::string path);

  // All REQUIRE log_mu_.
  //
  // Writes the state as it is in memory (plus `seal`) as a checkpoint into a
  // new file that atomically replaces the journal. The state's header,
  // sequence and file change only once the rename succeeded.
  core::Status Rewrite(const journal_format::Seal* seal);
  // Appends and syncs; a failure degrades the journal.
  core::Status AppendDurably(const std::vector<std::byte>& records);
  // Rewrite, degrading the journal if that fails or the checkpoint leaves
  // no room under the cap.
  core::Status CompactOrDegrade();
  // Makes a change that is already in memory durable: appends `records` if
  // they fit under the cap (true), else compacts so the checkpoint holds the
  // change (false). An error means the journal degraded.
  core::Result<bool> Persist(const std::vector<std::byte>& records);
  void EnterDegraded(const std::string& reason);
  core::Status MarkDirtySlow(std::uint64_t first_block, std::uint64_t end_block);
  // Builds one record with the next sequence number. REQUIRES mu_ too.
  void AddRecord(std::vector<std::byte>& out, journal_format::RecordType type,
                 std::span<const std::byte> payload, std::uint64_t epoch);
  void AddRecord(std::vector<std::byte>& out, journal_format::RecordType type,
                 std::span<const std::byte> payload);

  core::FileSystem& fs_;
  const std::string path_;
  std::unique_ptr<core::FileLock> lock_;
  std::function<void(const std::string&)> on_degraded_;
  std::mutex log_mu_;                  // serializes writers of the file
  std::unique_ptr<core::File> file_;   // GUARDED_BY(log_mu_)
  // Written under log_mu_; atomic so Report() may read them under mu_ only.
  std::atomic<std::uint64_t> file_size_ = 0;
  std::atomic<bool> closed_ = false;
  mutable std::mutex mu_;              // guards state_
  std::unique_ptr<State> state_;       // GUARDED_BY(mu_)
};

}  // namespace blkrep::tracker
