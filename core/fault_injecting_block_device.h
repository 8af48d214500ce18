// FaultInjectingBlockDevice: a decorator that fails chosen operations of
// another BlockDevice (nbdkit's error filter, as a layer of ours).
//
// An injected failure returns ErrnoStatus(error_number, ...) and does not
// reach the inner device: the volume is untouched. The one deliberate
// exception is TearNextWrite, which models a write cut off part-way.
// Operations without an armed fault are forwarded unchanged; SizeBytes and
// Identity are always forwarded.
//
// Ownership: does not own `inner`, which must outlive this object.
// Thread safety: safe for concurrent use if `inner` is; fault settings and
// counters are guarded by a mutex, and the inner call is made outside it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>

#include "core/block_device.h"
#include "core/status.h"

namespace blkrep::core {

class FaultInjectingBlockDevice final : public BlockDevice {
 public:
  enum class Op : std::uint8_t { kRead, kWrite, kFlush, kTrim, kWriteZeroes };
  static constexpr std::size_t kOpCount = 5;

  explicit FaultInjectingBlockDevice(BlockDevice& inner) : inner_(inner) {}
  FaultInjectingBlockDevice(const FaultInjectingBlockDevice&) = delete;
  FaultInjectingBlockDevice& operator=(const FaultInjectingBlockDevice&) =
      delete;

  // The next `count` calls of `op` fail with error_number (a positive
  // errno). Replaces any fault armed for `op`. REQUIRES: count > 0.
  void FailNext(Op op, int error_number, int count = 1);
  // The next `successful_calls` calls of `op` are forwarded; every call
  // after them fails with error_number until ClearFaults. Replaces any
  // fault armed for `op`.
  void FailAfter(Op op, std::uint64_t successful_calls, int error_number);
  // The next Write that no other fault fails forwards only its first
  // min(prefix_bytes, size) bytes to the inner device, then fails with
  // error_number (or with the inner device's error).
  void TearNextWrite(std::uint64_t prefix_bytes, int error_number);
  // Disarms every fault; counters are kept.
  void ClearFaults();

  // Calls of `op` made to this decorator, failed or not.
  std::uint64_t calls(Op op) const;
  // Calls of `op` failed by injection (torn writes included).
  std::uint64_t injected_failures(Op op) const;

  std::uint64_t SizeBytes() const override { return inner_.SizeBytes(); }
  Status Read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Status Write(std::uint64_t offset_bytes,
               std::span<const std::byte> data) override;
  Status Flush() override;
  Status Trim(std::uint64_t offset_bytes, std::uint64_t length_bytes) override;
  Status WriteZeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                     bool allow_unmap) override;
  Result<VolumeIdentity> Identity() override { return inner_.Identity(); }

 private:
  struct Fault {
    bool armed = false;
    std::uint64_t successes_left = 0;  // calls to let through first
    int failures_left = 0;             // -1: fail until cleared
    int error_number = 0;
  };
  struct TornWrite {
    bool armed = false;
    std::uint64_t prefix_bytes = 0;
    int error_number = 0;
  };

  // Counts the call and decides whether it fails; returns the injected
  // failure or OK (forward). `what` describes the call for the message.
  Status Admit(Op op, const std::string& what);

  BlockDevice& inner_;
  mutable std::mutex mutex_;
  std::array<Fault, kOpCount> faults_{};         // GUARDED_BY(mutex_)
  TornWrite torn_write_;                         // GUARDED_BY(mutex_)
  std::array<std::uint64_t, kOpCount> calls_{};  // GUARDED_BY(mutex_)
  std::array<std::uint64_t, kOpCount>
      injected_failures_{};  // GUARDED_BY(mutex_)
};

}  // namespace blkrep::core
