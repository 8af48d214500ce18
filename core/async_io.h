// AsyncIo: many file operations in flight, completions delivered by callback.
//
// The tracker's data path: a connection's reader submits reads, writes and
// flushes and goes on reading requests; a completion thread calls each
// operation's `done`, which sends the reply. Two engines, chosen once by
// MakeAsyncIo: io_uring (one ring, submissions serialized by a mutex, one
// thread reaping completions; short transfers and -EAGAIN resubmitted), and
// a pool of threads doing pread/pwrite/fdatasync where io_uring is missing.
// A -errno becomes a Status here, once.
//
// Thread safety: Submit may be called from any thread. `done` runs on an
// engine thread and must not block for long.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "core/io_backend.h"
#include "core/status.h"

namespace blkrep::core {

struct AsyncOp {
  enum class Kind : std::uint8_t { kRead, kWrite, kDataSync };
  Kind kind = Kind::kRead;
  int fd = -1;
  std::uint64_t offset_bytes = 0;
  std::byte* buffer = nullptr;  // kRead/kWrite; owned by the caller
  std::size_t length_bytes = 0;
  bool dsync = false;           // kWrite: durable before done (FUA)
  // Called once, on an engine thread, when the operation finished. A read
  // that meets end of file fills the rest with zeroes.
  std::function<void(Status)> done;
  // Engine bookkeeping.
  std::size_t transferred_bytes = 0;
};

class AsyncIo {
 public:
  virtual ~AsyncIo() = default;
  // Starts `op`, which must stay alive until its `done` ran. May wait for
  // room when the engine is full; never call it from a `done` callback.
  virtual void Submit(AsyncOp* op) = 0;
  virtual std::string_view name() const = 0;
};

// kAuto: io_uring where the kernel allows it, else the thread pool.
// Destroying the engine waits for every submitted operation.
Result<std::unique_ptr<AsyncIo>> MakeAsyncIo(IoBackendKind kind, unsigned queue_depth);

}  // namespace blkrep::core
