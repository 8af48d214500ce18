// Framing of the wire protocol (docs/wire-protocol.md, "Frames").
//
// Design note. A frame is a fixed 24-byte header and a body that is one
// protobuf message of blkrep.proto. The header carries the type, the body
// length (capped per type *before* any buffer is sized), a per-direction
// sequence number and an xxh3-64 over header and body, so a flipped bit
// anywhere — including in an offset inside the body — is caught before the
// body is parsed. DecodeFrame is the one gate (STYLE.md): it parses the body
// and checks every field against the session (volume indexes, block ranges,
// lengths, counts) and returns a typed message, or an error naming the frame
// and the field. The receiver and shipper state machines only check order.
//
// Thread safety: a FrameReader or FrameWriter is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "blkrep.pb.h"
#include "core/status.h"

namespace blkrep::proto {

inline constexpr std::uint32_t kProtocolVersion = 1;
inline constexpr std::uint32_t kFrameMagic = 0x46524B42;  // "BKRF" little-endian
inline constexpr std::size_t kFrameHeaderBytes = 24;

// Feature flags (Hello.feature_flags).
inline constexpr std::uint64_t kFeatureZstd = 1ULL << 0;
inline constexpr std::uint64_t kFeatureResume = 1ULL << 1;
// Checksum resync and verify (CYCLE_MODE_RESYNC compares hashes,
// CYCLE_MODE_VERIFY, REPLICA_HASHES, HASH_CREDIT).
inline constexpr std::uint64_t kFeatureChecksumResync = 1ULL << 2;
// Recovery points: CYCLE_BEGIN.recovery_points asks the receiver to keep the
// undo data of the last N cycles (docs/replica-format.md, "Recovery points").
inline constexpr std::uint64_t kFeatureRecoveryPoints = 1ULL << 3;
// Removing a guest's replica (REMOVE_GUEST, `blkrep delete`).
inline constexpr std::uint64_t kFeatureRemoveGuest = 1ULL << 4;
// The receiver reports diverged blocks (ReplicaState.diverged): blocks its
// replica changed after its committed epoch, which the shipper adds to an
// incremental cycle (a reversed job after a failover or migration).
inline constexpr std::uint64_t kFeatureDiverged = 1ULL << 5;
inline constexpr std::uint64_t kKnownFeatures =
    kFeatureZstd | kFeatureResume | kFeatureChecksumResync | kFeatureRecoveryPoints | kFeatureRemoveGuest |
    kFeatureDiverged;
// Diverged ranges in one HELLO_REPLY, all volumes together (the receiver
// coarsens to fit: a superset of the blocks).
inline constexpr std::size_t kMaxDivergedRanges = 1024;

// Caps (docs/wire-protocol.md, "Caps").
inline constexpr std::uint32_t kMinBlockSizeBytes = 4096;
inline constexpr std::uint32_t kMaxBlockSizeBytes = 1U << 20;
inline constexpr std::uint32_t kMaxBatchBytes = 8U << 20;         // raw bytes of one BLOCKS
inline constexpr std::uint32_t kMaxHashesPerFrame = 65536;        // STAGED_HASHES, KEEP
inline constexpr std::size_t kMaxVolumes = 64;
inline constexpr std::size_t kMaxNameBytes = 64;
inline constexpr std::size_t kMaxMessageBytes = 4096;             // ERROR text
inline constexpr std::uint64_t kMaxVolumeSizeBytes = 1ULL << 60;
// Blocks per volume: both sides keep a bitmap of them, so this bounds that
// memory (512 MiB) — 256 TiB at 64 KiB blocks, 16 TiB at 4 KiB.
inline constexpr std::uint64_t kMaxVolumeBlocks = 1ULL << 32;
// REPLICA_HASHES: blocks per frame, bytes per hash (xxh3-128), and the
// receiver's window of unconsumed hashes (bounds the shipper's memory).
inline constexpr std::uint32_t kMaxReplicaHashesPerFrame = 16384;
inline constexpr std::uint32_t kReplicaHashBytes = 16;
inline constexpr std::uint32_t kMaxHashWindowBlocks = 1U << 20;
// CYCLE_BEGIN.recovery_points: cycles whose undo data the receiver keeps.
inline constexpr std::uint32_t kMaxRecoveryPoints = 24;
inline constexpr std::uint32_t kMaxReplicaHashesFrameBytes = kMaxReplicaHashesPerFrame * kReplicaHashBytes + 64;
inline constexpr std::uint32_t kMaxRemoveGuestFrameBytes = 128;   // a job name
inline constexpr std::uint32_t kMaxSmallFrameBytes = 64U << 10;   // every other frame
inline constexpr std::uint32_t kMaxHashFrameBytes = kMaxHashesPerFrame * 9 + 64;
inline constexpr std::uint32_t kMaxBlocksFrameBytes =
    kMaxBatchBytes + (kMaxBatchBytes / kMinBlockSizeBytes) * 9 + 256;

enum class FrameType : std::uint8_t {
  kHello = 1,
  kHelloReply = 2,
  kStagedHashes = 3,
  kStagedEnd = 4,
  kCycleBegin = 5,
  kBlocks = 6,
  kZeroes = 7,
  kKeep = 8,
  kCycleEnd = 9,
  kAck = 10,
  kError = 11,
  kReplicaHashes = 12,
  kHashCredit = 13,
  kRemoveGuest = 14,
};
inline constexpr std::uint8_t kMaxFrameType = 14;
const char* FrameTypeName(FrameType type);
// The largest body a frame of `type` may have.
std::uint32_t MaxBodyBytes(FrameType type);

struct FrameHeader {
  FrameType type = FrameType::kError;
  std::uint32_t body_length = 0;
  std::uint32_t sequence = 0;
  std::uint64_t checksum = 0;
};

// Encodes a header; `checksum` is computed over the first 16 header bytes
// and `body`.
void EncodeHeader(FrameType type, std::uint32_t sequence, std::span<const std::byte> body,
                  std::byte out[kFrameHeaderBytes]);
// The same for a body given in consecutive parts (not copied together).
void EncodeHeader(FrameType type, std::uint32_t sequence, std::initializer_list<std::span<const std::byte>> body,
                  std::byte out[kFrameHeaderBytes]);
// Checks magic, type, reserved bits, the per-type length cap and the
// sequence; the checksum is checked by VerifyChecksum once the body is read.
core::Result<FrameHeader> DecodeHeader(std::span<const std::byte, kFrameHeaderBytes> bytes,
                                       std::uint32_t expected_sequence);
core::Status VerifyChecksum(std::span<const std::byte, kFrameHeaderBytes> header_bytes,
                            const FrameHeader& header, std::span<const std::byte> body);

// A byte stream: a pipe pair, a socket, an ssh child's stdio, TLS.
class Stream {
 public:
  virtual ~Stream() = default;
  // Reads exactly out.size() bytes. kEndOfData when the peer closed before
  // the first byte; kAborted ("cut off") when it closed in the middle.
  virtual core::Status ReadFull(std::span<std::byte> out) = 0;
  virtual core::Status WriteAll(std::span<const std::byte> data) = 0;
  // No more writes (half-close where the transport allows it).
  virtual void CloseWrite() {}
};

// A Stream over two file descriptors (they may be the same socket).
class FdStream final : public Stream {
 public:
  // Takes ownership of the descriptors when `owned`.
  FdStream(int read_fd, int write_fd, bool owned);
  ~FdStream() override;
  core::Status ReadFull(std::span<std::byte> out) override;
  core::Status WriteAll(std::span<const std::byte> data) override;
  void CloseWrite() override;

 private:
  int read_fd_;
  int write_fd_;
  bool owned_;
};

// Caps the write rate of another stream (pvesr's --rate: 10^6 bytes/s).
class RateLimitedStream final : public Stream {
 public:
  RateLimitedStream(Stream& inner, double bytes_per_second);
  core::Status ReadFull(std::span<std::byte> out) override { return inner_.ReadFull(out); }
  core::Status WriteAll(std::span<const std::byte> data) override;
  void CloseWrite() override { inner_.CloseWrite(); }

 private:
  Stream& inner_;
  double bytes_per_second_;
  double start_ = -1;
  std::uint64_t written_ = 0;
};

// A frame as it came off the wire: header checked, checksum verified, body
// not yet parsed.
struct RawFrame {
  FrameType type = FrameType::kError;
  std::vector<std::byte> body;
};

class FrameWriter {
 public:
  explicit FrameWriter(Stream& stream) : stream_(stream) {}
  // REQUIRES: the message's encoded size is within MaxBodyBytes(type).
  core::Status Send(FrameType type, const google::protobuf::MessageLite& message);
  // A BLOCKS frame whose payload (field 6) is not in `blocks` but in
  // `payload`, which is written from where it is, not copied: the body is
  // `blocks`' encoding followed by the payload field (protobuf allows any
  // field order). The same bytes on the wire as any BLOCKS frame would
  // decode to.
  core::Status SendBlocks(const Blocks& blocks, std::span<const std::byte> payload);
  std::uint64_t bytes_sent() const { return bytes_sent_; }

 private:
  Stream& stream_;
  std::uint32_t sequence_ = 0;
  std::uint64_t bytes_sent_ = 0;
  std::vector<std::byte> buffer_;
};

class FrameReader {
 public:
  explicit FrameReader(Stream& stream) : stream_(stream) {}
  // The next frame. kEndOfData on a clean end between frames; kAborted when
  // the stream was cut inside a frame; kCorruption for a bad header or
  // checksum.
  core::Result<RawFrame> Next();
  std::uint64_t bytes_received() const { return bytes_received_; }

 private:
  Stream& stream_;
  std::uint32_t sequence_ = 0;
  std::uint64_t bytes_received_ = 0;
};

// What the validator checks fields against: the volumes of the session's
// HELLO (empty before it).
struct SessionContext {
  std::vector<VolumeInfo> volumes;
  std::uint64_t BlockCount(std::uint32_t volume) const;
};

using Message = std::variant<Hello, HelloReply, StagedHashes, StagedEnd, CycleBegin, Blocks,
                             Zeroes, Keep, CycleEnd, Ack, Error, ReplicaHashes, HashCredit, RemoveGuest>;

// The one gate for untrusted frames: parses `frame`'s body and checks every
// field against `session`. kCorruption names the frame type and the field.
core::Result<Message> DecodeFrame(const RawFrame& frame, const SessionContext& session);

// The name rule for guests, jobs and volumes on the wire: 1..64 bytes of
// [A-Za-z0-9._-], not "." or "..".
bool ValidWireName(std::string_view name);

// The raw length of `block_count` blocks from `first_block` of `volume`
// (the last block of a volume may be short).
std::uint64_t RawLength(const VolumeInfo& volume, std::uint64_t first_block, std::uint64_t block_count);

// An ERROR frame's body for `status`: its code, and its text (after
// `prefix`) made one line of at most kMaxMessageBytes.
Error MakeError(const core::Status& status, std::string_view prefix = "");

// Reads one frame and decodes it; an ERROR frame from the peer becomes an
// error status carrying its message. `expect` lists the acceptable types;
// anything else is a protocol error naming what came and what was expected.
core::Result<Message> ReadMessage(FrameReader& reader, const SessionContext& session,
                                  std::initializer_list<FrameType> expect);

}  // namespace blkrep::proto
