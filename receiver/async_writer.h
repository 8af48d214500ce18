// AsyncWriter: a full cycle's in-place writes, overlapped with receiving.
//
// Design note. A full or resync cycle writes its blocks straight into the
// replica. Written synchronously (and with O_DIRECT, which skips the page
// cache's copy but waits for the disk), each batch's disk time would stall
// the receiver's socket reads, decompression and hashing. AsyncWriter owns
// a small pool of 4 KiB-aligned batch buffers: the receiver assembles a
// batch in Current(), hands it to Submit(), which starts the write on
// core::AsyncIo (io_uring, or the thread pool), and goes on with the next
// frame. Drain() waits for every write and reports the first failure; the
// receiver calls it before anything that must follow the data (fdatasync,
// an index record, a drop record, the commit).
//
// Memory: kBuffers x proto::kMaxBatchBytes, allocated on first use.
// Thread safety: one session thread calls everything; completions arrive on
// the engine's thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/async_io.h"
#include "core/file_block_device.h"
#include "core/status.h"

namespace blkrep::receiver {

class AsyncWriter {
 public:
  static constexpr std::size_t kBuffers = 4;

  AsyncWriter();
  ~AsyncWriter();  // waits for writes in flight
  AsyncWriter(const AsyncWriter&) = delete;
  AsyncWriter& operator=(const AsyncWriter&) = delete;

  // The buffer to assemble the next batch in (proto::kMaxBatchBytes,
  // aligned); the same one until Submit. Waits for a free buffer; fails if a
  // write failed.
  core::Result<std::byte*> Current();
  // Writes Current()'s first `length` bytes at `offset_bytes` of `device`
  // (which must outlive the write: Drain before closing it).
  core::Status Submit(core::FileBlockDevice& device, std::uint64_t offset_bytes, std::size_t length);
  // Waits for every write; the first failure of any write so far (it stays:
  // nothing may be made durable after a lost write).
  core::Status Drain();

 private:
  struct Slot;
  core::Status Start();

  std::unique_ptr<core::AsyncIo> io_;
  std::vector<std::unique_ptr<Slot>> slots_;
  Slot* current_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot*> free_;         // GUARDED_BY(mu_)
  std::size_t in_flight_ = 0;       // GUARDED_BY(mu_)
  core::Status failure_;            // GUARDED_BY(mu_)
  std::atomic<bool> direct_refused_ = false;  // O_DIRECT failed with EINVAL once
};

}  // namespace blkrep::receiver
