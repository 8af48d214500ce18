// Where `blkrep bench` sends its writes: a volume file directly (pwrite), or
// an NBD export (libnbd, several requests in flight).
//
// Design note. The bench compares the tracker's NBD export with the volume
// written directly and with qemu-nbd; the comparison is only fair if every
// side is driven the same way, so one interface takes the workload's writes
// and each side implements it. The NBD side keeps up to `queue_depth`
// requests in flight (a unix-socket round trip costs ~75 µs, PERF-NOTES.md):
// a write is issued at once into a free slot buffer and Write returns, blocking
// only while every slot is taken. Finish waits for every request and flushes.
//
// Thread safety: none; one sink per thread. Errors of a request surface on a
// later call (Write or Finish) naming the offset.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "core/status.h"

namespace blkrep::tools::bench {

class WriteSink {
 public:
  virtual ~WriteSink() = default;
  // Writes `length_bytes` at `offset_bytes`; `fill` writes the bytes into the
  // buffer it is given (valid only during the call).
  virtual core::Status Write(std::uint64_t offset_bytes, std::uint32_t length_bytes,
                             const std::function<void(std::span<std::byte>)>& fill) = 0;
  virtual core::Status WriteZeroes(std::uint64_t offset_bytes, std::uint32_t length_bytes) = 0;
  virtual core::Status Trim(std::uint64_t offset_bytes, std::uint32_t length_bytes) = 0;
  // Every write done and durable (fdatasync / NBD FLUSH).
  virtual core::Status Finish() = 0;
};

// pwrite into an open file (the volume written directly).
core::Result<std::unique_ptr<WriteSink>> OpenFileSink(const std::string& path, std::uint32_t max_write_bytes);

// An NBD client over the unix socket `socket_path`, export `export_name`.
core::Result<std::unique_ptr<WriteSink>> ConnectNbdSink(const std::string& socket_path,
                                                        const std::string& export_name, int queue_depth,
                                                        std::uint32_t max_write_bytes);

}  // namespace blkrep::tools::bench
