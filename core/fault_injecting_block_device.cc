#include "core/fault_injecting_block_device.h"

#include <algorithm>
#include <cassert>
#include <string>
#include <utility>

namespace blkrep::core {
namespace {

std::size_t Index(FaultInjectingBlockDevice::Op op) {
  return static_cast<std::size_t>(op);
}

std::string RangeText(const char* op, std::uint64_t offset_bytes,
                      std::uint64_t length_bytes) {
  return std::string(op) + " at offset " + std::to_string(offset_bytes) +
         " length " + std::to_string(length_bytes);
}

}  // namespace

void FaultInjectingBlockDevice::FailNext(Op op, int error_number, int count) {
  assert(count > 0);
  std::lock_guard<std::mutex> lock(mutex_);
  faults_[Index(op)] = Fault{.armed = true,
                             .successes_left = 0,
                             .failures_left = count,
                             .error_number = error_number};
}

void FaultInjectingBlockDevice::FailAfter(Op op, std::uint64_t successful_calls,
                                          int error_number) {
  std::lock_guard<std::mutex> lock(mutex_);
  faults_[Index(op)] = Fault{.armed = true,
                             .successes_left = successful_calls,
                             .failures_left = -1,
                             .error_number = error_number};
}

void FaultInjectingBlockDevice::TearNextWrite(std::uint64_t prefix_bytes,
                                              int error_number) {
  std::lock_guard<std::mutex> lock(mutex_);
  torn_write_ = TornWrite{.armed = true,
                          .prefix_bytes = prefix_bytes,
                          .error_number = error_number};
}

void FaultInjectingBlockDevice::ClearFaults() {
  std::lock_guard<std::mutex> lock(mutex_);
  faults_ = {};
  torn_write_ = {};
}

std::uint64_t FaultInjectingBlockDevice::calls(Op op) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return calls_[Index(op)];
}

std::uint64_t FaultInjectingBlockDevice::injected_failures(Op op) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return injected_failures_[Index(op)];
}

Status FaultInjectingBlockDevice::Admit(Op op, const std::string& what) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++calls_[Index(op)];
  Fault& fault = faults_[Index(op)];
  if (!fault.armed) return Status::Ok();
  if (fault.successes_left > 0) {
    --fault.successes_left;
    return Status::Ok();
  }
  const int error_number = fault.error_number;
  if (fault.failures_left > 0 && --fault.failures_left == 0) fault = Fault{};
  ++injected_failures_[Index(op)];
  return ErrnoStatus(error_number, "injected fault: " + what);
}

Status FaultInjectingBlockDevice::Read(std::uint64_t offset_bytes,
                                       std::span<std::byte> out) {
  BLKREP_RETURN_IF_ERROR(
      Admit(Op::kRead, RangeText("read", offset_bytes, out.size())));
  return inner_.Read(offset_bytes, out);
}

Status FaultInjectingBlockDevice::Write(std::uint64_t offset_bytes,
                                        std::span<const std::byte> data) {
  const std::string what = RangeText("write", offset_bytes, data.size());
  BLKREP_RETURN_IF_ERROR(Admit(Op::kWrite, what));
  TornWrite torn;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    torn = std::exchange(torn_write_, TornWrite{});
    if (torn.armed) ++injected_failures_[Index(Op::kWrite)];
  }
  if (!torn.armed) return inner_.Write(offset_bytes, data);
  const std::size_t prefix = static_cast<std::size_t>(
      std::min<std::uint64_t>(torn.prefix_bytes, data.size()));
  if (prefix > 0) {
    BLKREP_RETURN_IF_ERROR(inner_.Write(offset_bytes, data.first(prefix)));
  }
  return ErrnoStatus(torn.error_number, "injected fault: torn " + what +
                                            " after " + std::to_string(prefix) +
                                            " bytes");
}

Status FaultInjectingBlockDevice::Flush() {
  BLKREP_RETURN_IF_ERROR(Admit(Op::kFlush, "flush"));
  return inner_.Flush();
}

Status FaultInjectingBlockDevice::Trim(std::uint64_t offset_bytes,
                                       std::uint64_t length_bytes) {
  BLKREP_RETURN_IF_ERROR(
      Admit(Op::kTrim, RangeText("trim", offset_bytes, length_bytes)));
  return inner_.Trim(offset_bytes, length_bytes);
}

Status FaultInjectingBlockDevice::WriteZeroes(std::uint64_t offset_bytes,
                                              std::uint64_t length_bytes,
                                              bool allow_unmap) {
  BLKREP_RETURN_IF_ERROR(Admit(
      Op::kWriteZeroes, RangeText("write zeroes", offset_bytes, length_bytes)));
  return inner_.WriteZeroes(offset_bytes, length_bytes, allow_unmap);
}

}  // namespace blkrep::core
