// The NBD protocol as blkrep's tracker speaks it: constants, the request
// header, the one validation gate every request passes (nbdkit's
// validate_request), option payload parsing, and reply encoding.
//
// Everything here is pure (no I/O), so the decoders can be fuzzed. All
// integers on the wire are big-endian. Reference: the NBD protocol
// document (NetworkBlockDevice/nbd doc/proto.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace blkrep::tracker::nbd {

inline constexpr std::uint64_t kNbdMagic = 0x4e42444d41474943ULL;     // "NBDMAGIC"
inline constexpr std::uint64_t kOptionMagic = 0x49484156454f5054ULL;  // "IHAVEOPT"
inline constexpr std::uint64_t kOptionReplyMagic = 0x3e889045565a9ULL;
inline constexpr std::uint32_t kRequestMagic = 0x25609513U;
inline constexpr std::uint32_t kSimpleReplyMagic = 0x67446698U;
inline constexpr std::uint32_t kStructuredReplyMagic = 0x668e33efU;

// Handshake flags (server) and client flags.
inline constexpr std::uint16_t kFlagFixedNewstyle = 1U << 0;
inline constexpr std::uint16_t kFlagNoZeroes = 1U << 1;
inline constexpr std::uint32_t kClientFlagFixedNewstyle = 1U << 0;
inline constexpr std::uint32_t kClientFlagNoZeroes = 1U << 1;

// Options.
inline constexpr std::uint32_t kOptExportName = 1;
inline constexpr std::uint32_t kOptAbort = 2;
inline constexpr std::uint32_t kOptList = 3;
inline constexpr std::uint32_t kOptStartTls = 5;
inline constexpr std::uint32_t kOptInfo = 6;
inline constexpr std::uint32_t kOptGo = 7;
inline constexpr std::uint32_t kOptStructuredReply = 8;
inline constexpr std::uint32_t kOptListMetaContext = 9;
inline constexpr std::uint32_t kOptSetMetaContext = 10;

// Option reply types.
inline constexpr std::uint32_t kRepAck = 1;
inline constexpr std::uint32_t kRepServer = 2;
inline constexpr std::uint32_t kRepInfo = 3;
inline constexpr std::uint32_t kRepMetaContext = 4;
inline constexpr std::uint32_t kRepErrUnsup = 0x80000001U;
inline constexpr std::uint32_t kRepErrPolicy = 0x80000002U;
inline constexpr std::uint32_t kRepErrInvalid = 0x80000003U;
inline constexpr std::uint32_t kRepErrUnknown = 0x80000006U;
inline constexpr std::uint32_t kRepErrTooBig = 0x80000009U;

// NBD_INFO types.
inline constexpr std::uint16_t kInfoExport = 0;
inline constexpr std::uint16_t kInfoName = 1;
inline constexpr std::uint16_t kInfoDescription = 2;
inline constexpr std::uint16_t kInfoBlockSize = 3;

// Transmission flags.
inline constexpr std::uint16_t kTxHasFlags = 1U << 0;
inline constexpr std::uint16_t kTxReadOnly = 1U << 1;
inline constexpr std::uint16_t kTxSendFlush = 1U << 2;
inline constexpr std::uint16_t kTxSendFua = 1U << 3;
inline constexpr std::uint16_t kTxSendTrim = 1U << 5;
inline constexpr std::uint16_t kTxSendWriteZeroes = 1U << 6;
inline constexpr std::uint16_t kTxSendDf = 1U << 7;
inline constexpr std::uint16_t kTxCanMultiConn = 1U << 8;
inline constexpr std::uint16_t kTxSendFastZero = 1U << 11;

// Commands and their flags.
inline constexpr std::uint16_t kCmdRead = 0;
inline constexpr std::uint16_t kCmdWrite = 1;
inline constexpr std::uint16_t kCmdDisc = 2;
inline constexpr std::uint16_t kCmdFlush = 3;
inline constexpr std::uint16_t kCmdTrim = 4;
inline constexpr std::uint16_t kCmdWriteZeroes = 6;
inline constexpr std::uint16_t kCmdBlockStatus = 7;
inline constexpr std::uint16_t kCmdFlagFua = 1U << 0;
inline constexpr std::uint16_t kCmdFlagNoHole = 1U << 1;
inline constexpr std::uint16_t kCmdFlagDf = 1U << 2;
inline constexpr std::uint16_t kCmdFlagReqOne = 1U << 3;
inline constexpr std::uint16_t kCmdFlagFastZero = 1U << 4;

// Structured reply chunk types and flags.
inline constexpr std::uint16_t kReplyFlagDone = 1U << 0;
inline constexpr std::uint16_t kReplyTypeNone = 0;
inline constexpr std::uint16_t kReplyTypeOffsetData = 1;
inline constexpr std::uint16_t kReplyTypeBlockStatus = 5;
inline constexpr std::uint16_t kReplyTypeError = 0x8001;

// base:allocation status flags.
inline constexpr std::uint32_t kStateHole = 1U << 0;
inline constexpr std::uint32_t kStateZero = 1U << 1;

// Error values (the protocol's, which happen to equal Linux errnos).
inline constexpr std::uint32_t kEperm = 1;
inline constexpr std::uint32_t kEio = 5;
inline constexpr std::uint32_t kEnomem = 12;
inline constexpr std::uint32_t kEinval = 22;
inline constexpr std::uint32_t kEnospc = 28;
inline constexpr std::uint32_t kEoverflow = 75;
inline constexpr std::uint32_t kEnotsup = 95;
inline constexpr std::uint32_t kEshutdown = 108;

inline constexpr std::size_t kRequestHeaderBytes = 28;
// The largest READ/WRITE/zero/trim a client may send (NBD_INFO_BLOCK_SIZE max).
inline constexpr std::uint32_t kMaxRequestBytes = 32U << 20;
// The largest option payload we read; names are at most 4096 bytes.
inline constexpr std::uint32_t kMaxOptionBytes = 16U << 10;
inline constexpr std::size_t kMaxNameBytes = 4096;
inline constexpr std::uint32_t kBaseAllocationContextId = 1;
inline constexpr const char* kBaseAllocation = "base:allocation";

struct Request {
  std::uint32_t magic = 0;
  std::uint16_t flags = 0;
  std::uint16_t type = 0;
  std::uint64_t cookie = 0;
  std::uint64_t offset = 0;
  std::uint32_t length = 0;
};

// REQUIRES: bytes.size() >= kRequestHeaderBytes.
Request DecodeRequest(std::span<const std::byte> bytes);

// What the connection knows when it validates a request.
struct ExportLimits {
  std::uint64_t size_bytes = 0;
  bool read_only = false;
  bool structured_replies = false;
  bool base_allocation = false;  // the meta context was negotiated
};

struct Verdict {
  enum class Kind : std::uint8_t {
    kOk,
    kError,       // reply with `error`; for a WRITE, drain its payload first
    kDisconnect,  // the stream can no longer be trusted: hang up
  };
  Kind kind = Kind::kOk;
  std::uint32_t error = 0;
  std::string why;  // for logs and error chunks
  // Bytes of payload that follow the header and must be read (or drained).
  std::uint32_t payload_bytes = 0;
};

// The one gate: nothing about a request is used before this said kOk.
Verdict ValidateRequest(const Request& request, const ExportLimits& limits);

// Option payloads.
struct InfoRequest {  // NBD_OPT_INFO / NBD_OPT_GO
  std::string name;
  std::vector<std::uint16_t> info_types;
};
core::Result<InfoRequest> ParseInfoRequest(std::span<const std::byte> payload);

struct MetaContextRequest {  // NBD_OPT_LIST/SET_META_CONTEXT
  std::string export_name;
  std::vector<std::string> queries;
};
core::Result<MetaContextRequest> ParseMetaContextRequest(std::span<const std::byte> payload);

// Encoders (appending to `out`).
void PutU16(std::vector<std::byte>& out, std::uint16_t v);
void PutU32(std::vector<std::byte>& out, std::uint32_t v);
void PutU64(std::vector<std::byte>& out, std::uint64_t v);
void AppendOptionReply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                       std::span<const std::byte> data);
void AppendSimpleReply(std::vector<std::byte>& out, std::uint32_t error, std::uint64_t cookie);
// A structured chunk header; the caller appends `length` payload bytes.
void AppendChunkHeader(std::vector<std::byte>& out, std::uint16_t flags, std::uint16_t type,
                       std::uint64_t cookie, std::uint32_t length);
void AppendErrorChunk(std::vector<std::byte>& out, std::uint64_t cookie, std::uint32_t error,
                      const std::string& message);

std::uint64_t LoadBe64(const std::byte* p);
std::uint32_t LoadBe32(const std::byte* p);
std::uint16_t LoadBe16(const std::byte* p);

// Maps an errno from the volume to a protocol error value.
std::uint32_t ErrorFromErrno(int error_number);
const char* CommandName(std::uint16_t type);

}  // namespace blkrep::tracker::nbd
