#include "core/status.h"

#include <cstring>

namespace blkrep::core {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kNotFound: return "not found";
    case Code::kIoError: return "I/O error";
    case Code::kCorruption: return "corruption";
    case Code::kOutOfRange: return "out of range";
    case Code::kUnsupported: return "unsupported";
    case Code::kResourceExhausted: return "resource exhausted";
    case Code::kEndOfData: return "end of data";
    case Code::kAborted: return "aborted";
    case Code::kInternal: return "internal error";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string text = message_;
  if (error_number_ != 0) {
    text += ": ";
    text += std::strerror(error_number_);
  }
  return text;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  Status copy = *this;
  copy.message_ = std::string(context) + ": " + message_;
  return copy;
}

Status ErrnoStatus(int error_number, std::string_view what) {
  if (error_number < 0) error_number = -error_number;
  std::string message(what);
  switch (error_number) {
    case ENOSPC:
    case EDQUOT:
      return Status(Code::kResourceExhausted, std::move(message), error_number);
    case ENOENT:
      return Status(Code::kNotFound, std::move(message), error_number);
    case EOPNOTSUPP:
      return Status(Code::kUnsupported, std::move(message), error_number);
    default:
      return Status(Code::kIoError, std::move(message), error_number);
  }
}

}  // namespace blkrep::core
