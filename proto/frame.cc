#include "proto/frame.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/names.h"

namespace blkrep::proto {

using core::Result;
using core::Status;

const char* FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kHello: return "HELLO";
    case FrameType::kHelloReply: return "HELLO_REPLY";
    case FrameType::kStagedHashes: return "STAGED_HASHES";
    case FrameType::kStagedEnd: return "STAGED_END";
    case FrameType::kCycleBegin: return "CYCLE_BEGIN";
    case FrameType::kBlocks: return "BLOCKS";
    case FrameType::kZeroes: return "ZEROES";
    case FrameType::kKeep: return "KEEP";
    case FrameType::kCycleEnd: return "CYCLE_END";
    case FrameType::kAck: return "ACK";
    case FrameType::kError: return "ERROR";
    case FrameType::kReplicaHashes: return "REPLICA_HASHES";
    case FrameType::kHashCredit: return "HASH_CREDIT";
    case FrameType::kRemoveGuest: return "REMOVE_GUEST";
  }
  return "UNKNOWN";
}

std::uint32_t MaxBodyBytes(FrameType type) {
  switch (type) {
    case FrameType::kBlocks: return kMaxBlocksFrameBytes;
    case FrameType::kStagedHashes:
    case FrameType::kKeep: return kMaxHashFrameBytes;
    case FrameType::kReplicaHashes: return kMaxReplicaHashesFrameBytes;
    case FrameType::kRemoveGuest: return kMaxRemoveGuestFrameBytes;
    default: return kMaxSmallFrameBytes;
  }
}

namespace {

// xxh3-64 over the first 16 header bytes followed by the body (given in
// consecutive parts), one hash of the concatenation without copying it.
std::uint64_t FrameChecksum(std::span<const std::byte> header16,
                            std::initializer_list<std::span<const std::byte>> body) {
  core::Xxh3Stream h;
  h.Update(header16);
  for (auto part : body) h.Update(part);
  return h.Digest();
}

}  // namespace

void EncodeHeader(FrameType type, std::uint32_t sequence, std::span<const std::byte> body,
                  std::byte out[kFrameHeaderBytes]) {
  EncodeHeader(type, sequence, {body}, out);
}

void EncodeHeader(FrameType type, std::uint32_t sequence, std::initializer_list<std::span<const std::byte>> body,
                  std::byte out[kFrameHeaderBytes]) {
  std::size_t length = 0;
  for (auto part : body) length += part.size();
  std::vector<std::byte> h;
  h.reserve(kFrameHeaderBytes);
  core::ByteWriter w(h);
  w.U32(kFrameMagic);
  w.U8(static_cast<std::uint8_t>(type));
  w.U8(0);   // flags
  w.U16(0);  // reserved
  w.U32(static_cast<std::uint32_t>(length));
  w.U32(sequence);
  w.U64(FrameChecksum(std::span(h.data(), 16), body));
  std::memcpy(out, h.data(), kFrameHeaderBytes);
}

Result<FrameHeader> DecodeHeader(std::span<const std::byte, kFrameHeaderBytes> bytes,
                                 std::uint32_t expected_sequence) {
  core::ByteReader r(bytes);
  std::uint32_t magic = r.U32();
  std::uint8_t type = r.U8();
  std::uint8_t flags = r.U8();
  std::uint16_t reserved = r.U16();
  FrameHeader h;
  h.body_length = r.U32();
  h.sequence = r.U32();
  h.checksum = r.U64();
  if (magic != kFrameMagic) {
    return Status::Corruption("frame " + std::to_string(expected_sequence) +
                              ": bad magic (not a blkrep stream, or out of step)");
  }
  if (type == 0 || type > kMaxFrameType) {
    return Status::Corruption("frame " + std::to_string(expected_sequence) + ": unknown frame type " +
                              std::to_string(type));
  }
  h.type = static_cast<FrameType>(type);
  std::string what = std::string(FrameTypeName(h.type)) + " frame " + std::to_string(expected_sequence);
  if (flags != 0 || reserved != 0) return Status::Corruption(what + ": reserved header bits set");
  if (h.body_length > MaxBodyBytes(h.type)) {
    return Status::Corruption(what + ": body length " + std::to_string(h.body_length) +
                              " exceeds the cap of " + std::to_string(MaxBodyBytes(h.type)));
  }
  if (h.sequence != expected_sequence) {
    return Status::Corruption(what + ": sequence " + std::to_string(h.sequence) + ", expected " +
                              std::to_string(expected_sequence));
  }
  return h;
}

Status VerifyChecksum(std::span<const std::byte, kFrameHeaderBytes> header_bytes,
                      const FrameHeader& header, std::span<const std::byte> body) {
  if (FrameChecksum(header_bytes.first(16), {body}) != header.checksum) {
    return Status::Corruption(std::string(FrameTypeName(header.type)) + " frame " +
                              std::to_string(header.sequence) + ": checksum mismatch");
  }
  return Status::Ok();
}

// ---- streams ----

FdStream::FdStream(int read_fd, int write_fd, bool owned)
    : read_fd_(read_fd), write_fd_(write_fd), owned_(owned) {}

FdStream::~FdStream() {
  if (!owned_) return;
  if (read_fd_ >= 0) ::close(read_fd_);
  if (write_fd_ >= 0 && write_fd_ != read_fd_) ::close(write_fd_);
}

Status FdStream::ReadFull(std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(read_fd_, out.data() + done, out.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return core::ErrnoStatus(errno, "read from peer");
    }
    if (n == 0) {
      if (done == 0) return Status::EndOfData("peer closed the stream");
      return Status::Aborted("stream cut off after " + std::to_string(done) + " of " +
                             std::to_string(out.size()) + " bytes");
    }
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

Status FdStream::WriteAll(std::span<const std::byte> data) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(write_fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = ::write(write_fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) return Status::Aborted("peer closed the stream");
      return core::ErrnoStatus(errno, "write to peer");
    }
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

void FdStream::CloseWrite() {
  if (write_fd_ < 0) return;
  if (write_fd_ == read_fd_) {
    ::shutdown(write_fd_, SHUT_WR);
    return;
  }
  if (owned_) ::close(write_fd_);
  write_fd_ = -1;
}

RateLimitedStream::RateLimitedStream(Stream& inner, double bytes_per_second)
    : inner_(inner), bytes_per_second_(bytes_per_second) {}

Status RateLimitedStream::WriteAll(std::span<const std::byte> data) {
  using Clock = std::chrono::steady_clock;
  auto now = [] {
    return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  };
  if (start_ < 0) start_ = now();
  // Send in slices of at most 1/20 s worth so the rate is smooth.
  std::size_t slice = static_cast<std::size_t>(std::max(4096.0, bytes_per_second_ / 20));
  std::size_t done = 0;
  while (done < data.size()) {
    std::size_t n = std::min(slice, data.size() - done);
    double due = start_ + static_cast<double>(written_ + n) / bytes_per_second_;
    double wait = due - now();
    if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
    BLKREP_RETURN_IF_ERROR(inner_.WriteAll(data.subspan(done, n)));
    written_ += n;
    done += n;
  }
  return Status::Ok();
}

// ---- frames ----

Status FrameWriter::Send(FrameType type, const google::protobuf::MessageLite& message) {
  std::size_t size = message.ByteSizeLong();
  if (size > MaxBodyBytes(type)) {
    return Status::Internal(std::string(FrameTypeName(type)) + " frame of " + std::to_string(size) +
                            " bytes exceeds its cap");
  }
  buffer_.resize(kFrameHeaderBytes + size);
  if (!message.SerializeToArray(buffer_.data() + kFrameHeaderBytes, static_cast<int>(size))) {
    return Status::Internal(std::string("cannot encode ") + FrameTypeName(type));
  }
  EncodeHeader(type, sequence_, std::span(buffer_).subspan(kFrameHeaderBytes), buffer_.data());
  BLKREP_RETURN_IF_ERROR(stream_.WriteAll(buffer_));
  ++sequence_;
  bytes_sent_ += buffer_.size();
  return Status::Ok();
}

Status FrameWriter::SendBlocks(const Blocks& blocks, std::span<const std::byte> payload) {
  std::size_t meta = blocks.ByteSizeLong();
  // Field 6, length-delimited: tag (6 << 3) | 2, then the length as a varint.
  std::byte field[11];
  std::size_t field_bytes = 0;
  field[field_bytes++] = std::byte{(6 << 3) | 2};
  for (std::uint64_t v = payload.size();; v >>= 7) {
    field[field_bytes++] = static_cast<std::byte>((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    if (v < 0x80) break;
  }
  std::size_t body = meta + field_bytes + payload.size();
  if (body > MaxBodyBytes(FrameType::kBlocks)) {
    return Status::Internal("BLOCKS frame of " + std::to_string(body) + " bytes exceeds its cap");
  }
  buffer_.resize(kFrameHeaderBytes + meta + field_bytes);
  if (!blocks.SerializeToArray(buffer_.data() + kFrameHeaderBytes, static_cast<int>(meta))) {
    return Status::Internal("cannot encode BLOCKS");
  }
  std::memcpy(buffer_.data() + kFrameHeaderBytes + meta, field, field_bytes);
  EncodeHeader(FrameType::kBlocks, sequence_, {std::span(buffer_).subspan(kFrameHeaderBytes), payload},
               buffer_.data());
  BLKREP_RETURN_IF_ERROR(stream_.WriteAll(buffer_));
  BLKREP_RETURN_IF_ERROR(stream_.WriteAll(payload));
  ++sequence_;
  bytes_sent_ += kFrameHeaderBytes + body;
  return Status::Ok();
}

Result<RawFrame> FrameReader::Next() {
  std::array<std::byte, kFrameHeaderBytes> header_bytes;
  Status s = stream_.ReadFull(header_bytes);
  if (s.code() == core::Code::kAborted) {
    return Status::Aborted("stream cut off inside the header of frame " + std::to_string(sequence_));
  }
  BLKREP_RETURN_IF_ERROR(s);
  BLKREP_ASSIGN_OR_RETURN(FrameHeader h, DecodeHeader(header_bytes, sequence_));
  RawFrame frame;
  frame.type = h.type;
  frame.body.resize(h.body_length);  // capped by DecodeHeader
  s = stream_.ReadFull(frame.body);
  if (s.code() == core::Code::kEndOfData || s.code() == core::Code::kAborted) {
    return Status::Aborted(std::string("stream cut off inside ") + FrameTypeName(h.type) + " frame " +
                           std::to_string(sequence_));
  }
  BLKREP_RETURN_IF_ERROR(s);
  BLKREP_RETURN_IF_ERROR(VerifyChecksum(header_bytes, h, frame.body));
  ++sequence_;
  bytes_received_ += kFrameHeaderBytes + h.body_length;
  return frame;
}

// ---- the validator ----

bool ValidWireName(std::string_view name) {
  // The journal's rule (tracker/journal_format.h), so a name that travels
  // is one a replica path can be built from.
  return core::IsValidName(name);
}

namespace {
// A name for an error message: printable ASCII only, at most 80 bytes.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 80)) {
    out += static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f ? c : '?';
  }
  return out;
}
}  // namespace

std::uint64_t SessionContext::BlockCount(std::uint32_t volume) const {
  const VolumeInfo& v = volumes.at(volume);
  return (v.size_bytes() + v.block_size_bytes() - 1) / v.block_size_bytes();
}

std::uint64_t RawLength(const VolumeInfo& volume, std::uint64_t first_block, std::uint64_t block_count) {
  std::uint64_t bs = volume.block_size_bytes();
  std::uint64_t start = first_block * bs;
  std::uint64_t end = std::min<std::uint64_t>((first_block + block_count) * bs, volume.size_bytes());
  return end > start ? end - start : 0;
}

namespace {

class Checker {
 public:
  Checker(FrameType type, const SessionContext& session) : type_(type), session_(session) {}

  Status Fail(const std::string& what) const {
    return Status::Corruption(std::string(FrameTypeName(type_)) + " frame: " + what);
  }
  Status Volume(std::uint32_t volume) const {
    if (volume >= session_.volumes.size()) {
      return Fail("volume index " + std::to_string(volume) + " is not one of the " +
                  std::to_string(session_.volumes.size()) + " volumes of the session");
    }
    return Status::Ok();
  }
  // [first, first + count) must lie inside the volume; count >= 1.
  Status Range(std::uint32_t volume, std::uint64_t first, std::uint64_t count) const {
    BLKREP_RETURN_IF_ERROR(Volume(volume));
    std::uint64_t blocks = session_.BlockCount(volume);
    if (count == 0) return Fail("empty block range at block " + std::to_string(first));
    if (first >= blocks || count > blocks - first) {
      return Fail("blocks [" + std::to_string(first) + ", +" + std::to_string(count) + ") lie past the end of volume " +
                  session_.volumes[volume].name() + " (" + std::to_string(blocks) + " blocks)");
    }
    return Status::Ok();
  }

 private:
  FrameType type_;
  const SessionContext& session_;
};

Status CheckVolumeInfo(const Checker& c, const VolumeInfo& v) {
  if (!ValidWireName(v.name())) return c.Fail("bad volume name \"" + Printable(v.name()) + "\"");
  std::uint32_t bs = v.block_size_bytes();
  if (bs < kMinBlockSizeBytes || bs > kMaxBlockSizeBytes || (bs & (bs - 1)) != 0) {
    return c.Fail("volume " + v.name() + ": block size " + std::to_string(bs) +
                  " is not a power of two in [4096, 1048576]");
  }
  if (v.size_bytes() == 0 || v.size_bytes() > kMaxVolumeSizeBytes) {
    return c.Fail("volume " + v.name() + ": size " + std::to_string(v.size_bytes()) + " is out of range");
  }
  if ((v.size_bytes() + bs - 1) / bs > kMaxVolumeBlocks) {
    return c.Fail("volume " + v.name() + ": more than " + std::to_string(kMaxVolumeBlocks) + " blocks of " +
                  std::to_string(bs) + " bytes");
  }
  return Status::Ok();
}

template <typename T>
Result<T> Parse(const RawFrame& frame, const Checker& c) {
  T message;
  if (!message.ParseFromArray(frame.body.data(), static_cast<int>(frame.body.size()))) {
    return c.Fail("body does not parse");
  }
  return message;
}

Result<Message> DecodeHello(const RawFrame& f, const Checker& c) {
  BLKREP_ASSIGN_OR_RETURN(Hello m, Parse<Hello>(f, c));
  if (m.min_protocol_version() > m.protocol_version() || m.protocol_version() == 0) {
    return c.Fail("bad protocol version range [" + std::to_string(m.min_protocol_version()) + ", " +
                  std::to_string(m.protocol_version()) + "]");
  }
  if (!ValidWireName(m.guest())) return c.Fail("bad guest name");
  if (!ValidWireName(m.job())) return c.Fail("bad job name");
  if (m.volumes_size() == 0 || static_cast<std::size_t>(m.volumes_size()) > kMaxVolumes) {
    return c.Fail(std::to_string(m.volumes_size()) + " volumes (1 to 64 allowed)");
  }
  for (int i = 0; i < m.volumes_size(); ++i) {
    BLKREP_RETURN_IF_ERROR(CheckVolumeInfo(c, m.volumes(i)));
    for (int j = 0; j < i; ++j) {
      if (m.volumes(j).name() == m.volumes(i).name()) return c.Fail("volume " + m.volumes(i).name() + " twice");
    }
  }
  return Message{std::move(m)};
}

Result<Message> DecodeHelloReply(const RawFrame& f, const Checker& c, const SessionContext& s) {
  BLKREP_ASSIGN_OR_RETURN(HelloReply m, Parse<HelloReply>(f, c));
  if (m.protocol_version() == 0 || m.protocol_version() > kProtocolVersion) {
    return c.Fail("protocol version " + std::to_string(m.protocol_version()) + " is not spoken here");
  }
  if (static_cast<std::size_t>(m.volumes_size()) != s.volumes.size()) {
    return c.Fail(std::to_string(m.volumes_size()) + " volume states for " + std::to_string(s.volumes.size()) +
                  " volumes");
  }
  std::size_t diverged_ranges = 0;
  for (int i = 0; i < m.volumes_size(); ++i) {
    const ReplicaState& r = m.volumes(i);
    if (r.size_bytes() > kMaxVolumeSizeBytes) return c.Fail("replica size out of range");
    if (r.staged_blocks() > s.BlockCount(static_cast<std::uint32_t>(i))) {
      return c.Fail("more staged blocks than volume " + s.volumes[i].name() + " has");
    }
    if (r.diverged_size() % 2 != 0) return c.Fail("diverged of volume " + s.volumes[i].name() + ": an odd count");
    diverged_ranges += static_cast<std::size_t>(r.diverged_size()) / 2;
    if (diverged_ranges > kMaxDivergedRanges) {
      return c.Fail("more than " + std::to_string(kMaxDivergedRanges) + " diverged ranges");
    }
    std::uint64_t end = 0;
    for (int k = 0; k < r.diverged_size(); k += 2) {
      std::uint64_t first = r.diverged(k), count = r.diverged(k + 1);
      if (count == 0 || first < end) {
        return c.Fail("diverged of volume " + s.volumes[i].name() + ": range [" + std::to_string(first) + ", " +
                      std::to_string(count) + "] is empty or out of order");
      }
      BLKREP_RETURN_IF_ERROR(c.Range(static_cast<std::uint32_t>(i), first, count));
      end = first + count;
    }
  }
  return Message{std::move(m)};
}

Result<Message> DecodeHashes(const RawFrame& f, const Checker& c, std::uint32_t volume, std::uint64_t first,
                             int count) {
  if (count == 0 || static_cast<std::uint32_t>(count) > kMaxHashesPerFrame) {
    return c.Fail(std::to_string(count) + " hashes (1 to 65536 allowed)");
  }
  BLKREP_RETURN_IF_ERROR(c.Range(volume, first, static_cast<std::uint64_t>(count)));
  (void)f;
  return Message{};
}

Result<Message> DecodeBlocks(const RawFrame& f, const Checker& c, const SessionContext& s) {
  BLKREP_ASSIGN_OR_RETURN(Blocks m, Parse<Blocks>(f, c));
  BLKREP_RETURN_IF_ERROR(c.Volume(m.volume()));
  const VolumeInfo& v = s.volumes[m.volume()];
  if (m.block_count() == 0) return c.Fail("empty block range at block " + std::to_string(m.first_block()));
  if (std::uint64_t{m.block_count()} * v.block_size_bytes() > kMaxBatchBytes) {
    return c.Fail(std::to_string(m.block_count()) + " blocks of " + std::to_string(v.block_size_bytes()) +
                  " bytes exceed the batch cap of " + std::to_string(kMaxBatchBytes) + " bytes");
  }
  BLKREP_RETURN_IF_ERROR(c.Range(m.volume(), m.first_block(), m.block_count()));
  if (m.raw_length() != RawLength(v, m.first_block(), m.block_count())) {
    return c.Fail("raw length " + std::to_string(m.raw_length()) + " does not match " +
                  std::to_string(m.block_count()) + " blocks at block " + std::to_string(m.first_block()) +
                  " of volume " + v.name());
  }
  if (static_cast<std::uint32_t>(m.hashes_size()) != m.block_count()) {
    return c.Fail(std::to_string(m.hashes_size()) + " hashes for " + std::to_string(m.block_count()) + " blocks");
  }
  switch (m.compression()) {
    case COMPRESSION_NONE:
      if (m.payload().size() != m.raw_length()) {
        return c.Fail("uncompressed payload of " + std::to_string(m.payload().size()) + " bytes, expected " +
                      std::to_string(m.raw_length()));
      }
      break;
    case COMPRESSION_ZSTD:
      if (m.payload().empty() || m.payload().size() > m.raw_length()) {
        return c.Fail("compressed payload of " + std::to_string(m.payload().size()) + " bytes for " +
                      std::to_string(m.raw_length()) + " raw bytes");
      }
      break;
    default:
      return c.Fail("unknown compression " + std::to_string(m.compression()));
  }
  return Message{std::move(m)};
}

}  // namespace

Result<Message> DecodeFrame(const RawFrame& f, const SessionContext& s) {
  Checker c(f.type, s);
  if (f.body.size() > MaxBodyBytes(f.type)) return c.Fail("body exceeds its cap");
  bool need_session = f.type != FrameType::kHello && f.type != FrameType::kError;
  if (need_session && s.volumes.empty()) return c.Fail("arrived before the session's HELLO");
  switch (f.type) {
    case FrameType::kHello:
      return DecodeHello(f, c);
    case FrameType::kHelloReply:
      return DecodeHelloReply(f, c, s);
    case FrameType::kStagedHashes: {
      BLKREP_ASSIGN_OR_RETURN(StagedHashes m, Parse<StagedHashes>(f, c));
      BLKREP_RETURN_IF_ERROR(DecodeHashes(f, c, m.volume(), m.first_block(), m.hashes_size()).status());
      return Message{std::move(m)};
    }
    case FrameType::kStagedEnd:
    {
      BLKREP_ASSIGN_OR_RETURN(StagedEnd m, Parse<StagedEnd>(f, c));
      return Message{std::move(m)};
    }
    case FrameType::kCycleBegin: {
      BLKREP_ASSIGN_OR_RETURN(CycleBegin m, Parse<CycleBegin>(f, c));
      if (m.cycle_id() == 0) return c.Fail("cycle id 0");
      if (m.mode() != CYCLE_MODE_FULL && m.mode() != CYCLE_MODE_INCREMENTAL && m.mode() != CYCLE_MODE_RESYNC &&
          m.mode() != CYCLE_MODE_VERIFY) {
        return c.Fail("unknown cycle mode " + std::to_string(m.mode()));
      }
      if (m.recovery_points() > kMaxRecoveryPoints) {
        return c.Fail("recovery_points " + std::to_string(m.recovery_points()) + " (0 to " +
                      std::to_string(kMaxRecoveryPoints) + " allowed)");
      }
      const bool compares = m.mode() == CYCLE_MODE_RESYNC || m.mode() == CYCLE_MODE_VERIFY;
      if (compares ? m.hash_window_blocks() == 0 || m.hash_window_blocks() > kMaxHashWindowBlocks
                   : m.hash_window_blocks() != 0) {
        return c.Fail("hash window of " + std::to_string(m.hash_window_blocks()) + " blocks for a " +
                      (compares ? "comparing cycle (1 to 1048576 allowed)" : "cycle that compares nothing"));
      }
      if (m.volumes_size() == 0 || static_cast<std::size_t>(m.volumes_size()) > s.volumes.size()) {
        return c.Fail(std::to_string(m.volumes_size()) + " volume entries");
      }
      std::vector<bool> seen(s.volumes.size());
      for (const VolumeCycle& v : m.volumes()) {
        BLKREP_RETURN_IF_ERROR(c.Volume(v.volume()));
        if (seen[v.volume()]) return c.Fail("volume index " + std::to_string(v.volume()) + " twice");
        seen[v.volume()] = true;
        if (m.mode() == CYCLE_MODE_VERIFY) {
          if (v.epoch() != 0 || v.base_epoch() != 0) return c.Fail("a verify cycle with an epoch");
        } else {
          if (v.epoch() == 0) return c.Fail("epoch 0 for volume " + s.volumes[v.volume()].name());
          // A resync's base is whatever the replica holds, possibly from
          // before the source's journal was recreated.
          if (m.mode() != CYCLE_MODE_RESYNC && v.base_epoch() >= v.epoch()) {
            return c.Fail("base epoch not before the cycle's epoch");
          }
        }
        if (compares && v.block_count() != s.BlockCount(v.volume())) {
          return c.Fail("a comparing cycle covers " + std::to_string(v.block_count()) + " of the " +
                        std::to_string(s.BlockCount(v.volume())) + " blocks of volume " + s.volumes[v.volume()].name());
        }
        if (v.block_count() > s.BlockCount(v.volume())) {
          return c.Fail("block count " + std::to_string(v.block_count()) + " exceeds volume " +
                        s.volumes[v.volume()].name());
        }
      }
      return Message{std::move(m)};
    }
    case FrameType::kBlocks:
      return DecodeBlocks(f, c, s);
    case FrameType::kZeroes: {
      BLKREP_ASSIGN_OR_RETURN(Zeroes m, Parse<Zeroes>(f, c));
      BLKREP_RETURN_IF_ERROR(c.Range(m.volume(), m.first_block(), m.block_count()));
      return Message{std::move(m)};
    }
    case FrameType::kKeep: {
      BLKREP_ASSIGN_OR_RETURN(Keep m, Parse<Keep>(f, c));
      BLKREP_RETURN_IF_ERROR(DecodeHashes(f, c, m.volume(), m.first_block(), m.hashes_size()).status());
      return Message{std::move(m)};
    }
    case FrameType::kCycleEnd: {
      BLKREP_ASSIGN_OR_RETURN(CycleEnd m, Parse<CycleEnd>(f, c));
      if (m.cycle_id() == 0) return c.Fail("cycle id 0");
      for (const VolumeCount& v : m.volumes()) {
        BLKREP_RETURN_IF_ERROR(c.Volume(v.volume()));
        std::uint64_t blocks = s.BlockCount(v.volume());
        if (v.data_blocks() > blocks || v.zero_blocks() > blocks || v.kept_blocks() > blocks ||
            v.matched_blocks() > blocks) {
          return c.Fail("counts exceed volume " + s.volumes[v.volume()].name());
        }
      }
      return Message{std::move(m)};
    }
    case FrameType::kAck: {
      BLKREP_ASSIGN_OR_RETURN(Ack m, Parse<Ack>(f, c));
      if (static_cast<std::size_t>(m.committed_epochs_size()) != s.volumes.size()) {
        return c.Fail("committed epochs for " + std::to_string(m.committed_epochs_size()) + " volumes");
      }
      return Message{std::move(m)};
    }
    case FrameType::kReplicaHashes: {
      BLKREP_ASSIGN_OR_RETURN(ReplicaHashes m, Parse<ReplicaHashes>(f, c));
      if (m.hashes().size() % kReplicaHashBytes != 0) {
        return c.Fail(std::to_string(m.hashes().size()) + " hash bytes, not a multiple of 16");
      }
      const std::uint64_t count = m.hashes().size() / kReplicaHashBytes;
      if (count == 0 || count > kMaxReplicaHashesPerFrame) {
        return c.Fail(std::to_string(count) + " hashes (1 to 16384 allowed)");
      }
      BLKREP_RETURN_IF_ERROR(c.Range(m.volume(), m.first_block(), count));
      return Message{std::move(m)};
    }
    case FrameType::kHashCredit: {
      BLKREP_ASSIGN_OR_RETURN(HashCredit m, Parse<HashCredit>(f, c));
      std::uint64_t total = 0;
      for (std::uint32_t i = 0; i < s.volumes.size(); ++i) total += s.BlockCount(i);
      if (m.consumed_blocks() > total) {
        return c.Fail("consumed " + std::to_string(m.consumed_blocks()) + " hashes, the volumes have " +
                      std::to_string(total) + " blocks");
      }
      return Message{std::move(m)};
    }
    case FrameType::kRemoveGuest: {
      BLKREP_ASSIGN_OR_RETURN(RemoveGuest m, Parse<RemoveGuest>(f, c));
      if (!ValidWireName(m.job())) return c.Fail("bad job name \"" + Printable(m.job()) + "\"");
      return Message{std::move(m)};
    }
    case FrameType::kError: {
      BLKREP_ASSIGN_OR_RETURN(Error m, Parse<Error>(f, c));
      if (m.message().size() > kMaxMessageBytes) m.mutable_message()->resize(kMaxMessageBytes);
      for (char& ch : *m.mutable_message()) {
        if (static_cast<unsigned char>(ch) < 0x20) ch = ' ';  // one line, no control bytes
      }
      return Message{std::move(m)};
    }
  }
  return c.Fail("unknown frame type");
}

Error MakeError(const Status& status, std::string_view prefix) {
  Error error;
  error.set_code(static_cast<std::uint32_t>(status.code()));
  std::string message = std::string(prefix) + status.ToString();
  if (message.size() > kMaxMessageBytes) message.resize(kMaxMessageBytes);
  for (char& c : message) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  error.set_message(std::move(message));
  return error;
}

Result<Message> ReadMessage(FrameReader& reader, const SessionContext& session,
                            std::initializer_list<FrameType> expect) {
  BLKREP_ASSIGN_OR_RETURN(RawFrame frame, reader.Next());
  BLKREP_ASSIGN_OR_RETURN(Message m, DecodeFrame(frame, session));
  if (const Error* e = std::get_if<Error>(&m)) {
    core::Code code = e->code() > 0 && e->code() <= static_cast<std::uint32_t>(core::Code::kInternal)
                          ? static_cast<core::Code>(e->code())
                          : core::Code::kAborted;
    return Status::FromCode(code, "peer: " + e->message());
  }
  for (FrameType t : expect) {
    if (t == frame.type) return m;
  }
  std::string names;
  for (FrameType t : expect) names += std::string(names.empty() ? "" : " or ") + FrameTypeName(t);
  return Status::Corruption(std::string("protocol error: ") + FrameTypeName(frame.type) + " frame where " +
                            names + " was expected");
}

}  // namespace blkrep::proto
