#include "tracker/nbd_protocol.h"

#include <cerrno>

namespace blkrep::tracker::nbd {

using core::Result;
using core::Status;

std::uint64_t LoadBe64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}
std::uint32_t LoadBe32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint32_t>(p[i]);
  return v;
}
std::uint16_t LoadBe16(const std::byte* p) {
  return static_cast<std::uint16_t>((static_cast<unsigned>(p[0]) << 8) | static_cast<unsigned>(p[1]));
}
void PutU16(std::vector<std::byte>& out, std::uint16_t v) {
  out.push_back(static_cast<std::byte>(v >> 8));
  out.push_back(static_cast<std::byte>(v));
}
void PutU32(std::vector<std::byte>& out, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}
void PutU64(std::vector<std::byte>& out, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}

Request DecodeRequest(std::span<const std::byte> b) {
  Request r;
  r.magic = LoadBe32(&b[0]);
  r.flags = LoadBe16(&b[4]);
  r.type = LoadBe16(&b[6]);
  r.cookie = LoadBe64(&b[8]);
  r.offset = LoadBe64(&b[16]);
  r.length = LoadBe32(&b[24]);
  return r;
}

const char* CommandName(std::uint16_t type) {
  switch (type) {
    case kCmdRead: return "READ";
    case kCmdWrite: return "WRITE";
    case kCmdDisc: return "DISC";
    case kCmdFlush: return "FLUSH";
    case kCmdTrim: return "TRIM";
    case kCmdWriteZeroes: return "WRITE_ZEROES";
    case kCmdBlockStatus: return "BLOCK_STATUS";
  }
  return "UNKNOWN";
}

namespace {
Verdict Error(std::uint32_t error, std::string why, std::uint32_t payload = 0) {
  return Verdict{Verdict::Kind::kError, error, std::move(why), payload};
}
}  // namespace

Verdict ValidateRequest(const Request& r, const ExportLimits& limits) {
  if (r.magic != kRequestMagic) {
    return Verdict{Verdict::Kind::kDisconnect, 0, "bad request magic", 0};
  }
  std::uint32_t payload = r.type == kCmdWrite ? r.length : 0;
  std::uint16_t allowed = 0;
  switch (r.type) {
    case kCmdRead: allowed = kCmdFlagDf; break;
    case kCmdWrite: allowed = kCmdFlagFua; break;
    case kCmdDisc: allowed = 0; break;
    case kCmdFlush: allowed = 0; break;
    case kCmdTrim: allowed = kCmdFlagFua; break;
    case kCmdWriteZeroes: allowed = kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero; break;
    case kCmdBlockStatus: allowed = kCmdFlagReqOne; break;
    default:
      return Error(kEinval, "unknown command " + std::to_string(r.type));
  }
  // FUA is valid on every command (clients set it on reads too); it means
  // something only where data is written.
  allowed |= kCmdFlagFua;
  if ((r.flags & ~allowed) != 0) {
    return Error(kEinval, std::string("flags ") + std::to_string(r.flags) + " not valid for " +
                              CommandName(r.type), payload);
  }
  if (r.type == kCmdWrite && r.length > kMaxRequestBytes) {
    // The payload is drained in bounded pieces, never allocated.
    return Error(kEinval, "write of " + std::to_string(r.length) + " bytes exceeds the 32 MiB maximum",
                 payload);
  }
  if (r.type == kCmdDisc) return Verdict{};
  if (r.type == kCmdFlush) {
    if (r.offset != 0 || r.length != 0) return Error(kEinval, "FLUSH with nonzero offset or length");
    return Verdict{};
  }
  if (r.type == kCmdBlockStatus && !limits.base_allocation) {
    return Error(kEinval, "BLOCK_STATUS without a negotiated meta context");
  }
  if (r.type == kCmdRead && (r.flags & kCmdFlagDf) && !limits.structured_replies) {
    return Error(kEinval, "DF flag without structured replies");
  }
  if (r.length == 0) return Error(kEinval, std::string("zero-length ") + CommandName(r.type), payload);
  if (r.type != kCmdBlockStatus && r.type != kCmdTrim && r.type != kCmdWriteZeroes &&
      r.length > kMaxRequestBytes) {
    return Error((r.flags & kCmdFlagDf) ? kEoverflow : kEinval,
                 std::string(CommandName(r.type)) + " of " + std::to_string(r.length) +
                     " bytes exceeds the 32 MiB maximum",
                 payload);
  }
  bool writes = r.type == kCmdWrite || r.type == kCmdTrim || r.type == kCmdWriteZeroes;
  if (writes && limits.read_only) return Error(kEperm, "the export is read-only", payload);
  if (r.offset > limits.size_bytes || r.length > limits.size_bytes - r.offset) {
    // The spec: ENOSPC for writes past the end, EINVAL for reads and trims.
    bool fills = r.type == kCmdWrite || r.type == kCmdWriteZeroes;
    return Error(fills ? kEnospc : kEinval,
                 std::string(CommandName(r.type)) + " at " + std::to_string(r.offset) + "+" +
                     std::to_string(r.length) + " is beyond the end of the export (" +
                     std::to_string(limits.size_bytes) + " bytes)",
                 payload);
  }
  return Verdict{Verdict::Kind::kOk, 0, {}, payload};
}

Result<InfoRequest> ParseInfoRequest(std::span<const std::byte> p) {
  if (p.size() < 4) return Status::InvalidArgument("INFO/GO payload is too short");
  std::uint32_t name_length = LoadBe32(&p[0]);
  if (name_length > kMaxNameBytes || p.size() < 4ULL + name_length + 2) {
    return Status::InvalidArgument("INFO/GO export name length is invalid");
  }
  InfoRequest r;
  r.name.assign(reinterpret_cast<const char*>(&p[4]), name_length);
  std::size_t at = 4 + name_length;
  std::uint16_t count = LoadBe16(&p[at]);
  at += 2;
  if (p.size() != at + 2ULL * count) return Status::InvalidArgument("INFO/GO request list length is wrong");
  for (std::uint16_t i = 0; i < count; ++i) r.info_types.push_back(LoadBe16(&p[at + 2ULL * i]));
  return r;
}

Result<MetaContextRequest> ParseMetaContextRequest(std::span<const std::byte> p) {
  if (p.size() < 4) return Status::InvalidArgument("meta context payload is too short");
  std::uint32_t name_length = LoadBe32(&p[0]);
  if (name_length > kMaxNameBytes || p.size() < 8ULL + name_length) {
    return Status::InvalidArgument("meta context export name length is invalid");
  }
  MetaContextRequest r;
  r.export_name.assign(reinterpret_cast<const char*>(&p[4]), name_length);
  std::size_t at = 4 + name_length;
  std::uint32_t count = LoadBe32(&p[at]);
  at += 4;
  if (count > p.size()) return Status::InvalidArgument("meta context query count is invalid");
  for (std::uint32_t i = 0; i < count; ++i) {
    if (p.size() - at < 4) return Status::InvalidArgument("meta context query is cut off");
    std::uint32_t length = LoadBe32(&p[at]);
    at += 4;
    if (length > kMaxNameBytes || p.size() - at < length) {
      return Status::InvalidArgument("meta context query length is invalid");
    }
    r.queries.emplace_back(reinterpret_cast<const char*>(&p[at]), length);
    at += length;
  }
  if (at != p.size()) return Status::InvalidArgument("meta context payload has trailing bytes");
  return r;
}

void AppendOptionReply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                       std::span<const std::byte> data) {
  PutU64(out, kOptionReplyMagic);
  PutU32(out, option);
  PutU32(out, type);
  PutU32(out, static_cast<std::uint32_t>(data.size()));
  out.insert(out.end(), data.begin(), data.end());
}

void AppendSimpleReply(std::vector<std::byte>& out, std::uint32_t error, std::uint64_t cookie) {
  PutU32(out, kSimpleReplyMagic);
  PutU32(out, error);
  PutU64(out, cookie);
}

void AppendChunkHeader(std::vector<std::byte>& out, std::uint16_t flags, std::uint16_t type,
                       std::uint64_t cookie, std::uint32_t length) {
  PutU32(out, kStructuredReplyMagic);
  PutU16(out, flags);
  PutU16(out, type);
  PutU64(out, cookie);
  PutU32(out, length);
}

void AppendErrorChunk(std::vector<std::byte>& out, std::uint64_t cookie, std::uint32_t error,
                      const std::string& message) {
  std::string text = message.substr(0, 1024);
  AppendChunkHeader(out, kReplyFlagDone, kReplyTypeError, cookie,
                    static_cast<std::uint32_t>(6 + text.size()));
  PutU32(out, error);
  PutU16(out, static_cast<std::uint16_t>(text.size()));
  for (char c : text) out.push_back(static_cast<std::byte>(c));
}

std::uint32_t ErrorFromErrno(int e) {
  switch (e) {
    case EPERM: case EROFS: return kEperm;
    case ENOMEM: return kEnomem;
    case EINVAL: return kEinval;
    case ENOSPC: case EDQUOT: case EFBIG: return kEnospc;
    case EOVERFLOW: return kEoverflow;
    case EOPNOTSUPP: return kEnotsup;
    case ESHUTDOWN: return kEshutdown;
    default: return kEio;
  }
}

}  // namespace blkrep::tracker::nbd
