// The receiver: serves one replication session (docs/wire-protocol.md) and
// keeps the replicas of a guest under DIR/GUEST/ (receiver/replica_layout.h).
//
// Design note: what is durable when, and why a replica is always a complete
// cycle (DESIGN.md invariant 5).
//
// DIR/GUEST/ holds the replicas NAME.img, the guest state file `state`
// (guest_state.h, replaced atomically), the lock `.lock` (one session per
// guest) and `.staging/` (staging.h); docs/replica-format.md specifies them.
//
// - An incremental cycle never writes the replica before it is complete.
//   Received blocks (hash-checked) go to the staging data file; every ~32 MiB
//   and at CYCLE_END the data file is fdatasync'ed and only then are index
//   records appended and the index fdatasync'ed. A cut-off session leaves the
//   replica untouched; the durable index records are the "staged" blocks the
//   next session offers the shipper in STAGED_HASHES, so it sends KEEP
//   instead of the data again.
// - Commit: CYCLE_END validated -> staging durable -> state file says "apply
//   pending" -> the cycle's index records are applied to the replicas (an
//   idempotent redo: staged slots are never overwritten) -> replicas
//   fdatasync'ed -> state file says committed_epoch = the cycle's epoch, no
//   staging -> staging files deleted -> ACK. A session that finds "apply
//   pending" redoes the apply before anything else, so a crash during the
//   apply is never observed: the replica is the previous cycle until the
//   state file says "apply pending", and only the new cycle after it.
// - Resync and verify cycles compare: a thread (replica_hasher.h) streams
//   the xxh3-128 of every replica block while the session receives what the
//   shipper found different. A resync of replicas that hold a complete cycle
//   is staged like an incremental one (atomic); a verify writes nothing.
// - A replica written, replaced or restored behind the receiver's back
//   (its kind, device, inode or modification time differ from the state
//   file's record of the last commit) is reported `replaced` with no
//   epoch, which makes the shipper resync it.
// - Full cycles, and resyncs of a replica that is missing, incomplete or of
//   another size, write in place (there is no previous cycle worth
//   keeping): before the first write the state file durably marks the
//   replica incomplete, and it stays so until the cycle commits. The index
//   still logs (block, hash) of what was written in place, after the replica
//   was fdatasync'ed, so a cut full cycle resumes; before a staged block is
//   overwritten in place a durable "drop" record withdraws it.
// - Nothing a frame carries touches a file before the whole frame passed
//   proto::DecodeFrame and the session checks (order, coverage, hashes).
// - Recovery points (recovery_points.h): the apply of a staged cycle first
//   copies the old contents of the blocks it will write into a durable undo
//   file under .points/; full and in-place cycles drop every point.
//
// Thread safety: ServeSession may run concurrently for different guests;
// a second session for a guest that is being received is refused.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "proto/frame.h"

namespace blkrep::receiver {

struct ReceiverOptions {
  std::string replica_dir;
  // Received data is made durable (and becomes resumable) whenever this many
  // bytes arrived since the last time, and at CYCLE_END.
  std::uint64_t durability_batch_bytes = std::uint64_t{32} << 20;
  // Feature bits the receiver may grant (`receive --compat-features`: an
  // older receiver's, for compatibility tests); all it knows by default.
  std::uint64_t feature_mask = ~std::uint64_t{0};
  // Test seam: called at the named points of a cycle ("cycle-begun",
  // "apply-pending", "points-captured", "applied-record", "applied"); a
  // non-OK return stops the session at once as if the process had died there: no ERROR frame, no
  // flush, the status is returned.
  std::function<core::Status(std::string_view point)> crash_hook;
};

// What one session did; filled as far as the session got.
struct SessionReport {
  std::string guest, job;
  std::uint64_t cycle_id = 0;
  std::string mode;  // "full", "incremental", "resync"; empty without CYCLE_BEGIN
  std::uint64_t data_blocks = 0, zero_blocks = 0, kept_blocks = 0, bytes_received = 0;
  bool committed = false;
};

// Serves one session on `stream`: HELLO -> HELLO_REPLY, STAGED_HASHES*,
// STAGED_END -> (CYCLE_BEGIN -> BLOCKS/ZEROES/KEEP* -> CYCLE_END -> commit ->
// ACK). OK when the cycle committed, or when the peer closed the stream
// cleanly after STAGED_END (it only asked for the replica state). On any
// failure the peer gets an ERROR frame (best effort) with the one-line
// message of the returned status, and every replica is left at its previous
// committed cycle (or incomplete, when a full cycle was cut off).
// `report` may be null.
core::Status ServeSession(proto::Stream& stream, const ReceiverOptions& options, SessionReport* report);

// Applies a cycle the state of `guest` says is pending (validated and
// durable, not applied yet), as the next session would before anything
// else; nothing when none is. REQUIRES: the caller holds the guest's lock
// (`blkrep promote`, whose source may never open a session again).
core::Status FinishPendingApplyLocked(const std::string& replica_dir, const std::string& guest);

// What the receiver holds for a guest, read without taking the guest's lock
// (the state file is replaced atomically).
struct VolumeReplicaState {
  std::string name;
  std::string path;  // the replica
  std::uint64_t size_bytes = 0;
  std::uint32_t block_size_bytes = 0;
  std::uint64_t committed_epoch = 0;  // 0: no cycle committed
  bool incomplete = false;            // a full cycle is in place and unfinished
};

struct GuestReplicaState {
  std::string guest;
  std::string job;
  // A validated cycle is waiting to be applied (the next session does it).
  bool apply_pending = false;
  std::vector<VolumeReplicaState> volumes;
};

// kNotFound when the receiver holds nothing for `guest` under `replica_dir`.
core::Result<GuestReplicaState> ReadGuestState(const std::string& replica_dir, const std::string& guest);

}  // namespace blkrep::receiver
