// The shipper side of a session (docs/wire-protocol.md): handshake, then one
// cycle of frozen blocks streamed as BLOCKS, ZEROES and KEEP frames.
//
// Design note. Reading, compressing and sending overlap. The volume is read
// in batches (runs of frozen blocks up to kBatchBytes) on core::AsyncIo —
// io_uring with many batches in flight, O_DIRECT where the range allows it.
// A completed batch is fixed up from the copy-on-write store (a block the
// guest overwrote since the freeze is taken from its preserved copy) and
// goes to a pool of workers that split it into zero runs (ZEROES), runs the
// receiver already holds staged with the same hash (KEEP) and data runs
// (BLOCKS: xxh3-64 per block, zstd unless that does not shrink them). The
// sending thread writes the frames in completion order; the receiver does
// not need them in order. Memory is bounded by the buffer pool: queue
// depth + workers + 2 batches.
//
// Resync and verify cycles read every block and compare: the receiver
// streams the xxh3-128 of each replica block (REPLICA_HASHES, read by a
// thread of the shipper into a ring of hash_window_blocks entries), the
// workers hash the same blocks of the frozen source and compare. A resync
// sends only blocks that differ (KEEP for those already staged by a cut
// resync); a verify sends nothing and reports the differing blocks. The
// sending thread grants the receiver more hashes (HASH_CREDIT) as batches
// complete, so the hashes in memory stay bounded however fast the replica
// is read.
//
// Thread safety: a ShipperSession is used by one thread; it runs its own
// workers inside ShipCycle.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/io_backend.h"
#include "core/status.h"
#include "proto/frame.h"
#include "tracker/cow_store.h"
#include "tracker/dirty_bitmap.h"

namespace blkrep::shipper {

inline constexpr int kDefaultZstdLevel = 1;

// One frozen volume of a cycle.
struct VolumeSource {
  std::string name;
  std::string path;
  std::uint64_t size_bytes = 0;
  std::uint32_t block_size_bytes = 0;
  std::uint64_t epoch = 0;
  std::uint64_t base_epoch = 0;       // incremental: the replica's committed epoch
  tracker::DirtyBitmap blocks;        // the blocks this cycle covers
  tracker::CowStore* cow = nullptr;   // the running tracker's store, or none (offline)
};

struct ShipOptions {
  int zstd_level = kDefaultZstdLevel;  // 0: no compression; negative: zstd's fast levels
  // Compress at zstd_level only while the wire is the bottleneck: every 8
  // batches the sending thread compares the time it waited for batches with
  // the time it spent sending them, and compression is switched off while
  // it mostly waits (the CPU is then the limit; bench/README.md). false:
  // always zstd_level.
  bool adaptive_compression = true;
  core::IoBackendKind backend = core::IoBackendKind::kAuto;
  unsigned batches_in_flight = 8;
  unsigned workers = 2;
  // Raw bytes per read batch; 0: 4 MiB, or 8 MiB in a resync or verify,
  // which reads every block (the receiver's read size: the two sides then
  // share the disk evenly; bench/README.md, "Resync").
  std::uint32_t batch_bytes = 0;
  // Resync and verify: REPLICA_HASHES entries the receiver may send ahead of
  // the shipper (16 bytes of memory each). 0: 256 MiB of the volume, or
  // twice the blocks in the read pipeline if that is more. A receiver far
  // ahead would take turns on a shared disk instead of reading alongside.
  std::uint32_t hash_window_blocks = 0;
  // Recovery points the receiver keeps (CYCLE_BEGIN.recovery_points, 0 to
  // proto::kMaxRecoveryPoints; more is sent as the cap), when it negotiated
  // kFeatureRecoveryPoints; an older receiver keeps none.
  std::uint32_t recovery_points = 0;
  // Polled between batches; true stops the cycle with kCancelled (an ERROR
  // frame tells the receiver, which keeps what it durably staged).
  const std::atomic<bool>* cancel = nullptr;
  // Called from the sending thread after each frame: bytes of the volumes
  // covered so far, and in all.
  std::function<void(std::uint64_t done_bytes, std::uint64_t total_bytes)> progress;
};

struct ShipStats {
  std::uint64_t data_blocks = 0;
  std::uint64_t zero_blocks = 0;
  std::uint64_t kept_blocks = 0;
  std::uint64_t matched_blocks = 0;   // resync, verify: equal on both sides, not sent
  std::uint64_t compared_blocks = 0;  // resync, verify: blocks whose hashes were compared
  // Verify: per volume, the blocks whose hashes differ.
  std::vector<tracker::DirtyBitmap> mismatched;
  std::uint64_t raw_bytes = 0;        // data blocks' bytes before compression
  std::uint64_t payload_bytes = 0;    // their bytes on the wire
  std::uint64_t bytes_sent = 0;       // every frame
  std::uint64_t bytes_received = 0;
  // The receiver's own count of wire bytes it read this session, from its
  // ACK (Ack.bytes_received): equals bytes_sent when nothing was lost.
  std::uint64_t receiver_bytes = 0;
  std::string io_engine;
  bool compressed = false;  // compression was on at the end of the cycle
};

// What the receiver reported in the handshake.
struct ReceiverState {
  std::vector<proto::ReplicaState> volumes;
  // Per volume: block -> xxh3-64 of the blocks a cut-off cycle left staged.
  std::vector<std::unordered_map<std::uint64_t, std::uint64_t>> staged;
};

class ShipperSession {
 public:
  // The feature flags the receiver granted in HELLO_REPLY (after Hello).
  std::uint64_t features() const { return features_; }
  explicit ShipperSession(proto::Stream& stream) : stream_(stream), writer_(stream), reader_(stream) {}

  // Sends HELLO and reads HELLO_REPLY and the staged list.
  core::Result<ReceiverState> Hello(const std::string& guest, const std::string& job,
                                    const std::vector<proto::VolumeInfo>& volumes);

  // Ships one cycle and waits for its ACK. `volumes` are in HELLO order.
  // The cycle fails (and nothing is committed on the receiver) on any error,
  // including a copy-on-write store that overflowed.
  core::Status ShipCycle(std::uint64_t cycle_id, proto::CycleMode mode, std::vector<VolumeSource>& volumes,
                         const ReceiverState& receiver, const ShipOptions& options, ShipStats* stats);

  // After Hello, instead of a cycle: asks the receiver to remove the
  // guest's replicas, state and staging (REMOVE_GUEST) and waits for its
  // ACK. kUnsupported when the receiver does not offer it; the receiver's
  // refusal (the replica belongs to another job) comes as its error.
  core::Status RemoveGuest(const std::string& job);

  // Ends the session without a cycle.
  void Close() { stream_.CloseWrite(); }
  std::uint64_t bytes_sent() const { return writer_.bytes_sent(); }
  std::uint64_t bytes_received() const { return reader_.bytes_received(); }

 private:
  // After a failed write: the receiver's ERROR, if it sent one.
  core::Status PeerError(const core::Status& write_error);

  proto::Stream& stream_;
  proto::FrameWriter writer_;
  proto::FrameReader reader_;
  proto::SessionContext session_;
  std::uint64_t features_ = 0;  // negotiated in HELLO_REPLY
};

}  // namespace blkrep::shipper
