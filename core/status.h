// Status and Result<T>: errors are values in blkrep.
//
// Our code does not throw. A function that can fail returns Status (or
// Result<T> when it also produces a value); both are [[nodiscard]]. A -errno
// from the kernel becomes a Status exactly once, at the backend that made the
// system call (see ErrnoStatus). Readers distinguish end of data
// (kEndOfData), I/O errors (kIoError) and corrupt bytes (kCorruption).
#pragma once

#include <cerrno>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace blkrep::core {

enum class Code : std::uint8_t {
  kOk = 0,
  kInvalidArgument,    // bad arguments or input from a user (exit status 2)
  kNotFound,
  kIoError,            // the device or file failed; errno() tells more
  kCorruption,         // bytes on disk or wire failed validation
  kOutOfRange,         // offset/length outside the object
  kUnsupported,        // the kernel, filesystem or device lacks a feature
  kResourceExhausted,  // a cap was reached (journal, store, memory)
  kEndOfData,          // a reader reached the end of what was written
  kAborted,            // the operation was cancelled or cut off
  kInternal,           // a bug of ours
};

std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string message) {
    return Status(Code::kInvalidArgument, std::move(message));
  }
  static Status NotFound(std::string message) {
    return Status(Code::kNotFound, std::move(message));
  }
  static Status IoError(std::string message, int error_number = 0) {
    return Status(Code::kIoError, std::move(message), error_number);
  }
  static Status Corruption(std::string message) {
    return Status(Code::kCorruption, std::move(message));
  }
  static Status OutOfRange(std::string message) {
    return Status(Code::kOutOfRange, std::move(message));
  }
  static Status Unsupported(std::string message, int error_number = 0) {
    return Status(Code::kUnsupported, std::move(message), error_number);
  }
  static Status ResourceExhausted(std::string message) {
    return Status(Code::kResourceExhausted, std::move(message));
  }
  static Status EndOfData(std::string message) {
    return Status(Code::kEndOfData, std::move(message));
  }
  static Status Aborted(std::string message) {
    return Status(Code::kAborted, std::move(message));
  }
  // A status of any code, e.g. one decoded from a peer's ERROR frame.
  static Status FromCode(Code code, std::string message) { return Status(code, std::move(message)); }
  static Status Internal(std::string message) {
    return Status(Code::kInternal, std::move(message));
  }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  // The errno behind an I/O error, or 0.
  int error_number() const { return error_number_; }
  const std::string& message() const { return message_; }
  // "message" for errors built from context, "message: strerror" when an
  // errno is attached. Suitable after "blkrep: error: ".
  std::string ToString() const;

  // Returns a copy whose message is "context: message".
  Status WithContext(std::string_view context) const;

 private:
  friend Status ErrnoStatus(int error_number, std::string_view what);
  Status(Code code, std::string message, int error_number = 0)
      : code_(code), error_number_(error_number), message_(std::move(message)) {}

  Code code_ = Code::kOk;
  int error_number_ = 0;
  std::string message_;
};

// Turns a negative errno (as io_uring and our syscall wrappers return) or a
// positive errno into a Status naming `what`. ENOSPC/EDQUOT map to
// kResourceExhausted, EOPNOTSUPP/ENOTSUP/EINVAL-for-features are left to the
// caller; everything else is kIoError.
Status ErrnoStatus(int error_number, std::string_view what);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.ok()) status_ = Status::Internal("Result built from OK status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : status_;
  }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace blkrep::core

#define BLKREP_CONCAT_INNER(a, b) a##b
#define BLKREP_CONCAT(a, b) BLKREP_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the calling function if it is not OK.
#define BLKREP_RETURN_IF_ERROR(expr)                    \
  do {                                                  \
    ::blkrep::core::Status blkrep_status_ = (expr);     \
    if (!blkrep_status_.ok()) return blkrep_status_;    \
  } while (0)

// `lhs = value of expr`, or returns its Status from the calling function.
#define BLKREP_ASSIGN_OR_RETURN(lhs, expr) \
  BLKREP_ASSIGN_OR_RETURN_IMPL(BLKREP_CONCAT(blkrep_result_, __LINE__), lhs, expr)
#define BLKREP_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
