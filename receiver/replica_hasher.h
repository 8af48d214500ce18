// ReplicaHasher: the receiver's half of a resync or verify cycle
// (docs/wire-protocol.md, "Comparing cycles").
//
// Design note. A thread of its own reads every block of the cycle's
// replicas in order — large reads (8 MiB), several in flight on
// core::AsyncIo (io_uring, O_DIRECT where the range allows it) — hashes
// each block with xxh3-128 and sends the hashes as REPLICA_HASHES frames,
// while the session's thread goes on receiving the blocks the shipper finds
// different. It never runs further ahead than the shipper's credit
// (HASH_CREDIT) allows, so the shipper's memory stays bounded. The hasher
// owns the session's FrameWriter from Start() until it finished or was
// stopped; a failure it meets is sent as an ERROR frame (the shipper would
// otherwise wait for hashes forever) and returned by Finish().
//
// A block is read before the shipper can know whether it differs, so in an
// in-place resync no write ever races the read of the block it overwrites.
//
// Thread safety: Credit() and Stop() may be called from the session thread
// while the hasher runs; everything else from one thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/io_backend.h"
#include "core/status.h"
#include "proto/frame.h"

namespace blkrep::receiver {

class ReplicaHasher {
 public:
  struct Volume {
    std::uint32_t index = 0;  // in HELLO
    std::string path;
    std::uint64_t size_bytes = 0;
    std::uint32_t block_size_bytes = 0;
  };

  // `volumes` in HELLO order. `writer` must outlive the hasher.
  ReplicaHasher(proto::FrameWriter& writer, std::vector<Volume> volumes, std::uint32_t window_blocks,
                core::IoBackendKind backend = core::IoBackendKind::kAuto);
  ~ReplicaHasher();  // stops and joins
  ReplicaHasher(const ReplicaHasher&) = delete;
  ReplicaHasher& operator=(const ReplicaHasher&) = delete;

  void Start();
  // The shipper is done with the first `consumed` hashes. REQUIRES: the
  // caller checked it does not go backwards.
  void Credit(std::uint64_t consumed);
  std::uint64_t credited() const;
  // Waits for the thread: OK once every hash was sent.
  core::Status Finish();
  // Makes the thread stop at the next frame and joins it.
  void Stop();
  std::uint64_t total_blocks() const { return total_blocks_; }
  std::uint32_t window_blocks() const { return window_blocks_; }
  // True once the thread failed on its own and sent an ERROR frame.
  bool sent_error() const { return sent_error_; }
  std::uint64_t bytes_read() const { return bytes_read_; }

 private:
  void Run();
  core::Status HashVolume(const Volume& v);
  // Waits until the credit allows at least one more hash; how many of
  // `count` it allows, 0 if stopped.
  std::uint64_t WaitForCredit(std::uint64_t count);

  proto::FrameWriter& writer_;
  const std::vector<Volume> volumes_;
  const std::uint32_t window_blocks_;
  const core::IoBackendKind backend_;
  std::uint64_t total_blocks_ = 0;
  std::uint64_t sent_ = 0;        // thread only
  std::uint64_t bytes_read_ = 0;  // valid after Finish
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t consumed_ = 0;  // GUARDED_BY(mu_)
  bool stop_ = false;           // GUARDED_BY(mu_)
  core::Status status_;         // written by the thread, read after join
  bool sent_error_ = false;     // written by the thread, read after join
  std::thread thread_;
};

}  // namespace blkrep::receiver
