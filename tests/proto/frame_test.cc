// Framing and validator tests (docs/wire-protocol.md): the header codec, the
// reader's verdicts on corrupt, cut and clean streams, DecodeFrame's checks of
// every field of every frame type, and the rate limiter. Corruption is made by
// mutating bytes of frames the writer produced.
#include "proto/frame.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"

namespace blkrep::proto {
namespace {

using core::Code;

// An in-memory Stream: reads come from `input`, writes go to `output`.
// ReadFull follows the Stream contract: kEndOfData at the end before the
// first byte, kAborted when the end comes in the middle.
class MemoryStream final : public Stream {
 public:
  MemoryStream() = default;
  explicit MemoryStream(std::vector<std::byte> input) : input_(std::move(input)) {}

  core::Status ReadFull(std::span<std::byte> out) override {
    if (out.empty()) return core::Status::Ok();
    std::size_t left = input_.size() - read_at_;
    if (left == 0) return core::Status::EndOfData("end of memory stream");
    std::size_t n = std::min(left, out.size());
    std::memcpy(out.data(), input_.data() + read_at_, n);
    read_at_ += n;
    if (n < out.size()) return core::Status::Aborted("memory stream cut off");
    return core::Status::Ok();
  }
  core::Status WriteAll(std::span<const std::byte> data) override {
    output_.insert(output_.end(), data.begin(), data.end());
    return core::Status::Ok();
  }

  const std::vector<std::byte>& output() const { return output_; }

 private:
  std::vector<std::byte> input_;
  std::size_t read_at_ = 0;
  std::vector<std::byte> output_;
};

std::vector<std::byte> Bytes(std::initializer_list<unsigned> values) {
  std::vector<std::byte> out;
  for (unsigned v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

std::vector<std::byte> Body(const google::protobuf::MessageLite& m) {
  std::string s = m.SerializeAsString();
  std::vector<std::byte> out(s.size());
  std::transform(s.begin(), s.end(), out.begin(), [](char c) { return static_cast<std::byte>(c); });
  return out;
}

RawFrame Raw(FrameType type, const google::protobuf::MessageLite& m) { return RawFrame{type, Body(m)}; }

// The bytes FrameWriter puts on the wire for `frames`, in order.
std::vector<std::byte> Wire(const std::vector<std::pair<FrameType, const google::protobuf::MessageLite*>>& frames) {
  MemoryStream out;
  FrameWriter w(out);
  for (auto [type, m] : frames) EXPECT_TRUE(w.Send(type, *m).ok());
  return out.output();
}

std::vector<std::byte> Header(FrameType type, std::uint32_t sequence, std::span<const std::byte> body) {
  std::vector<std::byte> h(kFrameHeaderBytes);
  EncodeHeader(type, sequence, body, h.data());
  return h;
}

core::Result<FrameHeader> Decode(const std::vector<std::byte>& header, std::uint32_t expected_sequence) {
  return DecodeHeader(std::span<const std::byte, kFrameHeaderBytes>(header.data(), kFrameHeaderBytes),
                      expected_sequence);
}

void StoreU32(std::vector<std::byte>& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<std::byte>(v >> (8 * i));
}

// Asserts `s` is kCorruption and its message contains each of `parts`.
void ExpectCorruption(const core::Status& s, std::initializer_list<std::string_view> parts) {
  ASSERT_FALSE(s.ok()) << "accepted; expected an error mentioning " << *parts.begin();
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  for (std::string_view p : parts) {
    EXPECT_NE(s.message().find(p), std::string::npos) << "\"" << s.message() << "\" does not mention \"" << p << "\"";
  }
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << "an error is one line";
}

const FrameType kAllTypes[] = {
    FrameType::kHello, FrameType::kHelloReply, FrameType::kStagedHashes, FrameType::kStagedEnd,
    FrameType::kCycleBegin, FrameType::kBlocks, FrameType::kZeroes, FrameType::kKeep,
    FrameType::kCycleEnd, FrameType::kAck, FrameType::kError, FrameType::kReplicaHashes,
    FrameType::kHashCredit, FrameType::kRemoveGuest};

// ---- header ----

TEST(FrameHeaderTest, EncodeDecodeRoundTripForEveryType) {
  std::vector<std::byte> body = Bytes({1, 2, 3, 4, 5});
  for (FrameType type : kAllTypes) {
    std::vector<std::byte> h = Header(type, 77, body);
    EXPECT_EQ(core::LoadLe32(h.data()), kFrameMagic);
    core::Result<FrameHeader> d = Decode(h, 77);
    ASSERT_TRUE(d.ok()) << FrameTypeName(type) << ": " << d.status().ToString();
    EXPECT_EQ(d->type, type);
    EXPECT_EQ(d->body_length, body.size());
    EXPECT_EQ(d->sequence, 77u);
    EXPECT_EQ(d->checksum, core::LoadLe64(h.data() + 16));
    std::span<const std::byte, kFrameHeaderBytes> hs(h.data(), kFrameHeaderBytes);
    EXPECT_TRUE(VerifyChecksum(hs, *d, body).ok());
    std::vector<std::byte> other = Bytes({1, 2, 3, 4, 6});
    ExpectCorruption(VerifyChecksum(hs, *d, other), {FrameTypeName(type), "checksum mismatch"});
  }
}

TEST(FrameHeaderTest, EmptyBodyRoundTrips) {
  std::vector<std::byte> h = Header(FrameType::kStagedEnd, 0, {});
  core::Result<FrameHeader> d = Decode(h, 0);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->body_length, 0u);
}

TEST(FrameHeaderTest, BadMagicIsCorruption) {
  for (int byte = 0; byte < 4; ++byte) {
    std::vector<std::byte> h = Header(FrameType::kZeroes, 0, {});
    h[byte] ^= std::byte{0x20};
    ExpectCorruption(Decode(h, 0).status(), {"bad magic"});
  }
}

TEST(FrameHeaderTest, UnknownFrameTypeIsCorruption) {
  static_assert(kMaxFrameType == 14, "a new frame type: extend kAllTypes and these tests");
  for (unsigned type : {0u, 15u, 200u, 255u}) {
    std::vector<std::byte> h = Header(FrameType::kZeroes, 0, {});
    h[4] = static_cast<std::byte>(type);
    ExpectCorruption(Decode(h, 0).status(), {"unknown frame type " + std::to_string(type)});
  }
}

TEST(FrameHeaderTest, FlagsAndReservedBytesMustBeZero) {
  for (int byte : {5, 6, 7}) {
    for (unsigned bit = 0; bit < 8; ++bit) {
      std::vector<std::byte> h = Header(FrameType::kZeroes, 0, {});
      h[byte] = static_cast<std::byte>(1u << bit);
      ExpectCorruption(Decode(h, 0).status(), {"ZEROES", "reserved header bits"});
    }
  }
}

TEST(FrameHeaderTest, BodyLengthOverItsTypesCapIsCorruption) {
  EXPECT_EQ(MaxBodyBytes(FrameType::kBlocks), kMaxBlocksFrameBytes);
  EXPECT_EQ(MaxBodyBytes(FrameType::kStagedHashes), kMaxHashFrameBytes);
  EXPECT_EQ(MaxBodyBytes(FrameType::kKeep), kMaxHashFrameBytes);
  EXPECT_EQ(MaxBodyBytes(FrameType::kReplicaHashes), kMaxReplicaHashesFrameBytes);
  EXPECT_EQ(kMaxReplicaHashesFrameBytes, 262208u);  // docs/wire-protocol.md, "Caps"
  EXPECT_EQ(MaxBodyBytes(FrameType::kRemoveGuest), 128u);  // docs/wire-protocol.md, "Frames"
  for (FrameType type : kAllTypes) {
    std::uint32_t cap = MaxBodyBytes(type);
    if (type != FrameType::kBlocks && type != FrameType::kStagedHashes && type != FrameType::kKeep &&
        type != FrameType::kReplicaHashes && type != FrameType::kRemoveGuest) {
      EXPECT_EQ(cap, kMaxSmallFrameBytes) << FrameTypeName(type);
    }
    std::vector<std::byte> h = Header(type, 3, {});
    StoreU32(h, 8, cap);
    EXPECT_TRUE(Decode(h, 3).ok()) << FrameTypeName(type) << " at its cap";
    for (std::uint32_t length : {cap + 1, 0xFFFFFFFFu}) {
      StoreU32(h, 8, length);
      ExpectCorruption(Decode(h, 3).status(),
                       {FrameTypeName(type), "body length " + std::to_string(length), std::to_string(cap)});
    }
  }
}

TEST(FrameHeaderTest, WrongSequenceIsCorruption) {
  std::vector<std::byte> h = Header(FrameType::kCycleEnd, 5, {});
  ExpectCorruption(Decode(h, 4).status(), {"CYCLE_END", "sequence 5, expected 4"});
  ExpectCorruption(Decode(h, 6).status(), {"sequence 5, expected 6"});
  EXPECT_TRUE(Decode(h, 5).ok());
}

// ---- the worked example of docs/wire-protocol.md ----

TEST(FrameExampleTest, ZeroesFrameOfTheSpecificationIsExactlyTheseBytes) {
  // docs/wire-protocol.md, "Worked example": the shipper's third frame
  // (sequence 2), ZEROES {volume 1, first_block 256, block_count 16}.
  Zeroes z;
  z.set_volume(1);
  z.set_first_block(256);
  z.set_block_count(16);
  MemoryStream out;
  FrameWriter w(out);
  Hello hello;  // sequences 0 and 1; the content does not matter here
  ASSERT_TRUE(w.Send(FrameType::kHello, hello).ok());
  ASSERT_TRUE(w.Send(FrameType::kHello, hello).ok());
  std::size_t start = out.output().size();
  ASSERT_TRUE(w.Send(FrameType::kZeroes, z).ok());
  std::vector<std::byte> frame(out.output().begin() + static_cast<std::ptrdiff_t>(start), out.output().end());
  EXPECT_EQ(frame, Bytes({0x42, 0x4b, 0x52, 0x46, 0x07, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
                          0x02, 0x00, 0x00, 0x00, 0xd0, 0x57, 0xa6, 0x1a, 0xee, 0xae, 0x36, 0x1c,
                          0x08, 0x01, 0x10, 0x80, 0x02, 0x18, 0x10}));
  // The checksum is XXH3-64 of header bytes 0..15 followed by the body.
  std::vector<std::byte> covered(frame.begin(), frame.begin() + 16);
  covered.insert(covered.end(), frame.begin() + kFrameHeaderBytes, frame.end());
  EXPECT_EQ(core::Xxh3_64(covered), 0x1c36aeee1aa657d0ULL);
}

// The frame `message` becomes as the `sequence`-th frame of a stream.
std::vector<std::byte> FrameAt(std::uint32_t sequence, FrameType type, const google::protobuf::MessageLite& message) {
  MemoryStream out;
  FrameWriter w(out);
  Hello hello;  // the earlier frames; their content does not matter here
  for (std::uint32_t i = 0; i < sequence; ++i) EXPECT_TRUE(w.Send(FrameType::kHello, hello).ok());
  std::size_t start = out.output().size();
  EXPECT_TRUE(w.Send(type, message).ok());
  return std::vector<std::byte>(out.output().begin() + static_cast<std::ptrdiff_t>(start), out.output().end());
}

TEST(FrameExampleTest, HashCreditFrameOfTheSpecificationIsExactlyTheseBytes) {
  // docs/wire-protocol.md, "Worked example of a verify": the shipper's third
  // frame (sequence 2), HASH_CREDIT {consumed_blocks 256}.
  HashCredit credit;
  credit.set_consumed_blocks(256);
  std::vector<std::byte> frame = FrameAt(2, FrameType::kHashCredit, credit);
  EXPECT_EQ(frame, Bytes({0x42, 0x4b, 0x52, 0x46, 0x0d, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
                          0x02, 0x00, 0x00, 0x00, 0xf6, 0x81, 0x14, 0x7f, 0xb3, 0x13, 0xe2, 0x94,
                          0x08, 0x80, 0x02}));
  std::vector<std::byte> covered(frame.begin(), frame.begin() + 16);
  covered.insert(covered.end(), frame.begin() + kFrameHeaderBytes, frame.end());
  EXPECT_EQ(core::Xxh3_64(covered), 0x94e213b37f1481f6ULL);
}

TEST(FrameExampleTest, ReplicaHashesFrameOfTheSpecificationIsExactlyTheseBytes) {
  // docs/wire-protocol.md, "Worked example of a verify": the receiver's
  // third frame (sequence 2), REPLICA_HASHES {volume 0, first_block 0, the
  // xxh3-128 of block 0 of disk0: 65536 zero bytes}.
  std::vector<std::byte> block(65536);
  core::Hash128 h = core::Xxh3_128(block);
  EXPECT_EQ(h.low, 0x33b202d302b65caaULL);
  EXPECT_EQ(h.high, 0xfd5ee061c8433a0fULL);
  std::vector<std::byte> hash(kReplicaHashBytes);
  core::StoreLe64(hash.data(), h.low);
  core::StoreLe64(hash.data() + 8, h.high);
  ReplicaHashes m;
  m.set_volume(0);       // the default: absent from the bytes
  m.set_first_block(0);  // likewise
  m.set_hashes(reinterpret_cast<const char*>(hash.data()), hash.size());
  std::vector<std::byte> frame = FrameAt(2, FrameType::kReplicaHashes, m);
  EXPECT_EQ(frame, Bytes({0x42, 0x4b, 0x52, 0x46, 0x0c, 0x00, 0x00, 0x00, 0x12, 0x00, 0x00, 0x00,
                          0x02, 0x00, 0x00, 0x00, 0x2d, 0x1f, 0x75, 0x5a, 0x74, 0xac, 0x10, 0x26,
                          0x1a, 0x10, 0xaa, 0x5c, 0xb6, 0x02, 0xd3, 0x02, 0xb2, 0x33, 0x0f, 0x3a,
                          0x43, 0xc8, 0x61, 0xe0, 0x5e, 0xfd}));
  std::vector<std::byte> covered(frame.begin(), frame.begin() + 16);
  covered.insert(covered.end(), frame.begin() + kFrameHeaderBytes, frame.end());
  EXPECT_EQ(core::Xxh3_64(covered), 0x2610ac745a751f2dULL);
  // The example's session: disk0 and disk1, 64 MiB of 64 KiB blocks each.
  SessionContext s;
  for (const char* name : {"disk0", "disk1"}) {
    VolumeInfo v;
    v.set_name(name);
    v.set_size_bytes(64 << 20);
    v.set_block_size_bytes(65536);
    s.volumes.push_back(v);
  }
  core::Result<Message> back = DecodeFrame(RawFrame{FrameType::kReplicaHashes,
                                                    std::vector<std::byte>(frame.begin() + kFrameHeaderBytes,
                                                                           frame.end())},
                                           s);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(std::get<ReplicaHashes>(*back).hashes().size(), kReplicaHashBytes);
}

// ---- the reader ----

Zeroes SmallZeroes() {
  Zeroes z;
  z.set_volume(1);
  z.set_first_block(256);
  z.set_block_count(16);
  return z;
}

TEST(FrameReaderTest, ReadsWhatTheWriterSent) {
  Zeroes z = SmallZeroes();
  StagedEnd end;
  Error e;
  e.set_code(4);
  e.set_message("x");
  MemoryStream out;
  FrameWriter w(out);
  ASSERT_TRUE(w.Send(FrameType::kZeroes, z).ok());
  ASSERT_TRUE(w.Send(FrameType::kStagedEnd, end).ok());  // empty body
  ASSERT_TRUE(w.Send(FrameType::kError, e).ok());
  MemoryStream in(out.output());
  FrameReader r(in);
  const FrameType expected[] = {FrameType::kZeroes, FrameType::kStagedEnd, FrameType::kError};
  for (FrameType t : expected) {
    core::Result<RawFrame> f = r.Next();
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ(f->type, t);
  }
  EXPECT_EQ(r.Next().status().code(), Code::kEndOfData);
  EXPECT_EQ(r.bytes_received(), w.bytes_sent());
  EXPECT_EQ(w.bytes_sent(), out.output().size());
}

TEST(FrameReaderTest, WriterRefusesABodyOverItsCap) {
  Error e;
  e.set_message(std::string(kMaxSmallFrameBytes, 'x'));
  MemoryStream out;
  FrameWriter w(out);
  EXPECT_EQ(w.Send(FrameType::kError, e).code(), Code::kInternal);
  EXPECT_TRUE(out.output().empty());
}

TEST(FrameReaderTest, BitFlipAtEveryByteIsDetected) {
  Zeroes z = SmallZeroes();
  std::vector<std::byte> wire = Wire({{FrameType::kZeroes, &z}});
  ASSERT_EQ(wire.size(), kFrameHeaderBytes + 7);
  for (std::size_t i = 0; i < wire.size(); ++i) {
    for (unsigned bit = 0; bit < 8; ++bit) {
      std::vector<std::byte> bad = wire;
      bad[i] ^= static_cast<std::byte>(1u << bit);
      MemoryStream in(bad);
      FrameReader r(in);
      core::Status s = r.Next().status();
      ASSERT_FALSE(s.ok()) << "flip of bit " << bit << " of byte " << i << " went unnoticed";
      if (i >= 8 && i < 12) {
        // A longer body length reads past the end of the stream.
        EXPECT_TRUE(s.code() == Code::kCorruption || s.code() == Code::kAborted) << s.ToString();
      } else {
        EXPECT_EQ(s.code(), Code::kCorruption) << "byte " << i << ": " << s.ToString();
      }
    }
  }
}

TEST(FrameReaderTest, StreamCutAtEveryOffsetIsAbortedInsideAndEndOfDataBetweenFrames) {
  Zeroes z = SmallZeroes();
  Blocks b;
  b.set_volume(0);
  b.set_block_count(1);
  b.set_raw_length(4096);
  b.set_payload(std::string(4096, 'a'));
  b.add_hashes(1);
  std::vector<std::byte> wire = Wire({{FrameType::kZeroes, &z}, {FrameType::kBlocks, &b}});
  std::size_t first_end = kFrameHeaderBytes + SmallZeroes().ByteSizeLong();
  for (std::size_t cut = 0; cut <= wire.size(); ++cut) {
    MemoryStream in(std::vector<std::byte>(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(cut)));
    FrameReader r(in);
    std::size_t whole_frames = cut >= wire.size() ? 2 : cut >= first_end ? 1 : 0;
    for (std::size_t i = 0; i < whole_frames; ++i) ASSERT_TRUE(r.Next().ok()) << "cut at " << cut;
    core::Status s = r.Next().status();
    bool at_boundary = cut == 0 || cut == first_end || cut == wire.size();
    EXPECT_EQ(s.code(), at_boundary ? Code::kEndOfData : Code::kAborted) << "cut at " << cut << ": " << s.ToString();
    if (!at_boundary) {
      EXPECT_NE(s.message().find("cut off"), std::string::npos) << s.message();
    }
  }
}

TEST(FrameReaderTest, FramesOutOfSequenceAreCorruption) {
  Zeroes z = SmallZeroes();
  std::vector<std::byte> one = Wire({{FrameType::kZeroes, &z}});
  std::vector<std::byte> twice = one;
  twice.insert(twice.end(), one.begin(), one.end());  // sequence 0 again: a replayed frame
  MemoryStream in(twice);
  FrameReader r(in);
  ASSERT_TRUE(r.Next().ok());
  ExpectCorruption(r.Next().status(), {"sequence 0, expected 1"});
}

// ---- DecodeFrame ----

VolumeInfo Volume(std::string name, std::uint64_t size_bytes, std::uint32_t block_size_bytes) {
  VolumeInfo v;
  v.set_name(std::move(name));
  v.set_size_bytes(size_bytes);
  v.set_block_size_bytes(block_size_bytes);
  return v;
}

constexpr std::uint32_t kBlock0 = 65536;
constexpr std::uint64_t kSize0 = 160 * kBlock0 + 1000;  // 161 blocks, the last one 1000 bytes
constexpr std::uint64_t kBlocks0 = 161;
constexpr std::uint64_t kBlocks1 = 256;                 // 1 MiB of 4 KiB blocks

Hello GoodHello() {
  Hello h;
  h.set_protocol_version(1);
  h.set_min_protocol_version(1);
  h.set_feature_flags(kFeatureZstd | kFeatureResume);
  h.set_guest("100");
  h.set_job("100-0");
  *h.add_volumes() = Volume("disk0", kSize0, kBlock0);
  *h.add_volumes() = Volume("disk1", kBlocks1 * 4096, 4096);
  return h;
}

SessionContext Session() {
  SessionContext s;
  Hello h = GoodHello();
  s.volumes.assign(h.volumes().begin(), h.volumes().end());
  return s;
}

// Decodes `m` as a frame of `type` in the two-volume session.
core::Status DecodeIn(FrameType type, const google::protobuf::MessageLite& m,
                      const SessionContext& s = Session()) {
  return DecodeFrame(Raw(type, m), s).status();
}

TEST(DecodeFrameTest, GoodHelloIsAcceptedWithoutASession) {
  core::Result<Message> m = DecodeFrame(Raw(FrameType::kHello, GoodHello()), SessionContext{});
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE(std::holds_alternative<Hello>(*m));
  EXPECT_EQ(std::get<Hello>(*m).volumes(1).name(), "disk1");
}

TEST(DecodeFrameTest, HelloWithABadVersionRangeIsRejected) {
  Hello h = GoodHello();
  h.set_protocol_version(0);
  h.set_min_protocol_version(0);
  ExpectCorruption(DecodeIn(FrameType::kHello, h), {"HELLO frame", "protocol version"});
  h = GoodHello();
  h.set_min_protocol_version(2);
  ExpectCorruption(DecodeIn(FrameType::kHello, h), {"protocol version range [2, 1]"});
  h.set_protocol_version(7);  // a newer shipper still may speak 2..7
  EXPECT_TRUE(DecodeIn(FrameType::kHello, h).ok());
}

TEST(DecodeFrameTest, HelloWithBadNamesIsRejected) {
  for (std::string bad : {std::string(""), std::string("."), std::string(".."), std::string("a/b"),
                          std::string(65, 'n'), std::string("a b"), std::string("a\0b", 3)}) {
    Hello h = GoodHello();
    h.set_guest(bad);
    ExpectCorruption(DecodeIn(FrameType::kHello, h), {"bad guest name"});
    h = GoodHello();
    h.set_job(bad);
    ExpectCorruption(DecodeIn(FrameType::kHello, h), {"bad job name"});
    h = GoodHello();
    h.mutable_volumes(1)->set_name(bad);
    ExpectCorruption(DecodeIn(FrameType::kHello, h), {"bad volume name"});
  }
  Hello h = GoodHello();
  h.mutable_volumes(1)->set_name(std::string(64, 'n'));
  h.set_guest("A-z_0.9");
  EXPECT_TRUE(DecodeIn(FrameType::kHello, h).ok());
}

TEST(DecodeFrameTest, BadVolumeNameErrorStaysOneLine) {
  // The rejected name is untrusted text: it must not break the one-line error.
  for (std::string bad : {std::string("x\ny"), std::string("\x1b[2J"), std::string("a\rb")}) {
    Hello h = GoodHello();
    h.mutable_volumes(0)->set_name(bad);
    core::Status s = DecodeIn(FrameType::kHello, h);
    ExpectCorruption(s, {"bad volume name"});
    for (char c : s.message()) EXPECT_GE(static_cast<unsigned char>(c), 0x20u) << s.message();
  }
}

TEST(DecodeFrameTest, WireNamesFollowTheJournalsRule) {
  // docs/wire-protocol.md and receiver::ReplicaPath: a name does not start
  // with '.' or '-' (no hidden files, nothing that reads as an option).
  EXPECT_FALSE(ValidWireName(".hidden"));
  EXPECT_FALSE(ValidWireName("-rf"));
  EXPECT_TRUE(ValidWireName("vm-100.disk_0"));
  Hello h = GoodHello();
  h.mutable_volumes(0)->set_name(".staging");
  ExpectCorruption(DecodeIn(FrameType::kHello, h), {"bad volume name"});
}

TEST(DecodeFrameTest, HelloWithBadBlockSizesIsRejected) {
  for (std::uint32_t bs : {0u, 512u, 2048u, 3000u, 6144u, 65537u, 2u << 20, 0x80000000u}) {
    Hello h = GoodHello();
    h.mutable_volumes(0)->set_block_size_bytes(bs);
    ExpectCorruption(DecodeIn(FrameType::kHello, h), {"volume disk0: block size " + std::to_string(bs)});
  }
  for (std::uint32_t bs : {4096u, 8192u, 1u << 20}) {
    Hello h = GoodHello();
    h.mutable_volumes(0)->set_block_size_bytes(bs);
    EXPECT_TRUE(DecodeIn(FrameType::kHello, h).ok()) << bs;
  }
}

TEST(DecodeFrameTest, HelloWithBadSizesIsRejected) {
  for (std::uint64_t size : {std::uint64_t{0}, kMaxVolumeSizeBytes + 1, ~std::uint64_t{0}}) {
    Hello h = GoodHello();
    h.mutable_volumes(1)->set_size_bytes(size);
    ExpectCorruption(DecodeIn(FrameType::kHello, h), {"volume disk1: size", "out of range"});
  }
  // The largest volume: 2^32 blocks of the largest block size.
  Hello h = GoodHello();
  h.mutable_volumes(1)->set_block_size_bytes(kMaxBlockSizeBytes);
  h.mutable_volumes(1)->set_size_bytes(kMaxVolumeBlocks * kMaxBlockSizeBytes);
  EXPECT_TRUE(DecodeIn(FrameType::kHello, h).ok());
  h.mutable_volumes(1)->set_size_bytes(kMaxVolumeBlocks * kMaxBlockSizeBytes + 1);
  ExpectCorruption(DecodeIn(FrameType::kHello, h), {"volume disk1", "more than 4294967296 blocks"});
}

TEST(DecodeFrameTest, HelloWithTooManyOrNoOrDuplicateVolumesIsRejected) {
  Hello h = GoodHello();
  h.clear_volumes();
  ExpectCorruption(DecodeIn(FrameType::kHello, h), {"0 volumes"});
  for (std::size_t i = 0; i < kMaxVolumes; ++i) *h.add_volumes() = Volume("v" + std::to_string(i), 4096, 4096);
  EXPECT_TRUE(DecodeIn(FrameType::kHello, h).ok());
  *h.add_volumes() = Volume("one-too-many", 4096, 4096);
  ExpectCorruption(DecodeIn(FrameType::kHello, h), {"65 volumes"});
  h = GoodHello();
  *h.add_volumes() = Volume("disk0", 4096, 4096);
  ExpectCorruption(DecodeIn(FrameType::kHello, h), {"volume disk0 twice"});
}

TEST(DecodeFrameTest, BodyThatDoesNotParseIsRejected) {
  for (FrameType t : kAllTypes) {
    RawFrame f{t, Bytes({0xFF, 0xFF, 0xFF, 0xFF})};
    ExpectCorruption(DecodeFrame(f, Session()).status(), {FrameTypeName(t), "does not parse"});
  }
}

TEST(DecodeFrameTest, BodyOverItsCapIsRejected) {
  RawFrame f{FrameType::kZeroes, std::vector<std::byte>(kMaxSmallFrameBytes + 1)};
  ExpectCorruption(DecodeFrame(f, Session()).status(), {"ZEROES", "exceeds its cap"});
}

TEST(DecodeFrameTest, EveryFrameButHelloAndErrorBeforeHelloIsRejected) {
  for (FrameType t : kAllTypes) {
    core::Status s = DecodeFrame(RawFrame{t, {}}, SessionContext{}).status();
    if (t == FrameType::kHello) {
      ExpectCorruption(s, {"HELLO frame", "protocol version"});  // an empty HELLO is bad for itself
    } else if (t == FrameType::kError) {
      EXPECT_TRUE(s.ok()) << s.ToString();
    } else {
      ExpectCorruption(s, {FrameTypeName(t), "before the session's HELLO"});
    }
  }
  ExpectCorruption(DecodeFrame(RawFrame{static_cast<FrameType>(kMaxFrameType + 1), {}}, Session()).status(),
                   {"unknown frame type"});
}

HelloReply GoodReply() {
  HelloReply r;
  r.set_protocol_version(1);
  r.set_feature_flags(kFeatureResume);
  ReplicaState* a = r.add_volumes();
  a->set_exists(true);
  a->set_size_bytes(kSize0);
  a->set_committed_epoch(4);
  a->set_staged_base_epoch(4);
  a->set_staged_blocks(kBlocks0);
  r.add_volumes();
  return r;
}

TEST(DecodeFrameTest, HelloReplyIsCheckedAgainstTheHello) {
  EXPECT_TRUE(DecodeIn(FrameType::kHelloReply, GoodReply()).ok());
  HelloReply r = GoodReply();
  r.set_protocol_version(0);
  ExpectCorruption(DecodeIn(FrameType::kHelloReply, r), {"HELLO_REPLY", "protocol version 0"});
  r.set_protocol_version(kProtocolVersion + 1);
  ExpectCorruption(DecodeIn(FrameType::kHelloReply, r), {"protocol version 2 is not spoken"});
  r = GoodReply();
  r.add_volumes();
  ExpectCorruption(DecodeIn(FrameType::kHelloReply, r), {"3 volume states for 2 volumes"});
  r.mutable_volumes()->RemoveLast();
  r.mutable_volumes()->RemoveLast();
  ExpectCorruption(DecodeIn(FrameType::kHelloReply, r), {"1 volume states for 2 volumes"});
  r = GoodReply();
  r.mutable_volumes(0)->set_staged_blocks(kBlocks0 + 1);
  ExpectCorruption(DecodeIn(FrameType::kHelloReply, r), {"more staged blocks than volume disk0"});
  r = GoodReply();
  r.mutable_volumes(1)->set_size_bytes(kMaxVolumeSizeBytes + 1);
  ExpectCorruption(DecodeIn(FrameType::kHelloReply, r), {"replica size out of range"});
}

// STAGED_HASHES and KEEP share their rules.
template <typename M>
void CheckHashRuns(FrameType type) {
  SCOPED_TRACE(FrameTypeName(type));
  M m;
  m.set_volume(1);
  m.set_first_block(kBlocks1 - 3);
  for (int i = 0; i < 3; ++i) m.add_hashes(0x1111 * static_cast<unsigned>(i));
  EXPECT_TRUE(DecodeIn(type, m).ok());  // ends exactly at the end of the volume
  m.add_hashes(9);
  ExpectCorruption(DecodeIn(type, m), {FrameTypeName(type), "blocks [253, +4) lie past the end of volume disk1"});
  m.set_first_block(~std::uint64_t{0});
  ExpectCorruption(DecodeIn(type, m), {"past the end"});
  m.set_first_block(0);
  m.set_volume(2);
  ExpectCorruption(DecodeIn(type, m), {"volume index 2 is not one of the 2 volumes"});
  m.set_volume(0);
  m.clear_hashes();
  ExpectCorruption(DecodeIn(type, m), {"0 hashes"});
  SessionContext big;
  big.volumes.push_back(Volume("big", 1ULL << 40, 4096));
  for (std::uint32_t i = 0; i < kMaxHashesPerFrame; ++i) m.add_hashes(i);
  EXPECT_TRUE(DecodeIn(type, m, big).ok());
  ASSERT_LE(m.ByteSizeLong(), MaxBodyBytes(type));
  m.add_hashes(1);
  ASSERT_LE(m.ByteSizeLong(), MaxBodyBytes(type));  // the count check, not the length cap, rejects it
  ExpectCorruption(DecodeIn(type, m, big), {"65537 hashes"});
}

TEST(DecodeFrameTest, StagedHashesAreCheckedAgainstTheVolume) { CheckHashRuns<StagedHashes>(FrameType::kStagedHashes); }
TEST(DecodeFrameTest, KeepIsCheckedAgainstTheVolume) { CheckHashRuns<Keep>(FrameType::kKeep); }

TEST(DecodeFrameTest, StagedEndIsAccepted) {
  StagedEnd e;
  e.set_total_blocks(12);
  EXPECT_TRUE(DecodeIn(FrameType::kStagedEnd, e).ok());
}

CycleBegin GoodCycleBegin() {
  CycleBegin c;
  c.set_cycle_id(9);
  c.set_mode(CYCLE_MODE_INCREMENTAL);
  VolumeCycle* a = c.add_volumes();
  a->set_volume(1);
  a->set_epoch(5);
  a->set_base_epoch(4);
  a->set_block_count(kBlocks1);
  VolumeCycle* b = c.add_volumes();
  b->set_volume(0);
  b->set_epoch(5);
  b->set_base_epoch(4);
  b->set_block_count(0);  // nothing changed on disk0
  return c;
}

TEST(DecodeFrameTest, CycleBeginIsCheckedAgainstTheSession) {
  EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, GoodCycleBegin()).ok());
  CycleBegin c = GoodCycleBegin();
  c.set_cycle_id(0);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"CYCLE_BEGIN", "cycle id 0"});
  for (int mode : {0, 5, 1000}) {
    c = GoodCycleBegin();
    c.set_mode(static_cast<CycleMode>(mode));
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"unknown cycle mode " + std::to_string(mode)});
  }
  c = GoodCycleBegin();
  c.clear_volumes();
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"0 volume entries"});
  c = GoodCycleBegin();
  *c.add_volumes() = c.volumes(0);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"3 volume entries"});
  c = GoodCycleBegin();
  c.mutable_volumes(1)->set_volume(1);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"volume index 1 twice"});
  c = GoodCycleBegin();
  c.mutable_volumes(0)->set_volume(2);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"volume index 2 is not one of"});
  c = GoodCycleBegin();
  c.mutable_volumes(0)->set_epoch(0);
  c.mutable_volumes(0)->set_base_epoch(0);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"epoch 0 for volume disk1"});
  for (std::uint64_t base : {5u, 6u}) {
    c = GoodCycleBegin();
    c.mutable_volumes(0)->set_base_epoch(base);
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"base epoch not before"});
  }
  c = GoodCycleBegin();
  c.mutable_volumes(0)->set_block_count(kBlocks1 + 1);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"block count 257 exceeds volume disk1"});
  c = GoodCycleBegin();
  c.set_mode(CYCLE_MODE_FULL);
  c.mutable_volumes(1)->set_base_epoch(0);
  c.mutable_volumes(1)->set_block_count(kBlocks0);
  EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, c).ok());
}

Blocks GoodBlocks(std::uint64_t first_block = 10, std::uint32_t count = 2) {
  Blocks b;
  b.set_volume(0);
  b.set_first_block(first_block);
  b.set_block_count(count);
  b.set_compression(COMPRESSION_NONE);
  std::uint64_t raw = RawLength(Session().volumes[0], first_block, count);
  b.set_raw_length(static_cast<std::uint32_t>(raw));
  b.set_payload(std::string(raw, '\x5a'));
  for (std::uint32_t i = 0; i < count; ++i) b.add_hashes(100 + i);
  return b;
}

TEST(DecodeFrameTest, GoodBlocksAreAccepted) {
  core::Result<Message> m = DecodeFrame(Raw(FrameType::kBlocks, GoodBlocks()), Session());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(std::get<Blocks>(*m).raw_length(), 2 * kBlock0);
  Blocks z = GoodBlocks();
  z.set_compression(COMPRESSION_ZSTD);
  z.set_payload("anything shorter than raw_length");  // decompressed by the receiver, not here
  EXPECT_TRUE(DecodeIn(FrameType::kBlocks, z).ok());
  z.set_payload(std::string(2 * kBlock0, 'x'));  // incompressible data may stay as long
  EXPECT_TRUE(DecodeIn(FrameType::kBlocks, z).ok());
}

TEST(DecodeFrameTest, BlocksWithTheShortLastBlockCarryOnlyItsBytes) {
  Blocks b = GoodBlocks(kBlocks0 - 2, 2);
  EXPECT_EQ(b.raw_length(), kBlock0 + 1000);
  EXPECT_TRUE(DecodeIn(FrameType::kBlocks, b).ok());
  b.set_raw_length(2 * kBlock0);
  b.set_payload(std::string(2 * kBlock0, 'a'));
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b),
                   {"BLOCKS", "raw length 131072 does not match 2 blocks at block 159 of volume disk0"});
}

TEST(DecodeFrameTest, BlocksWithABadRangeAreRejected) {
  Blocks b = GoodBlocks();
  b.set_volume(2);
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"volume index 2 is not one of the 2 volumes"});
  b = GoodBlocks(kBlocks0 - 1, 2);
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"blocks [160, +2) lie past the end of volume disk0 (161 blocks)"});
  b.set_first_block(~std::uint64_t{0} - 1);
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"past the end"});
  b = GoodBlocks();
  b.set_block_count(0);
  core::Status empty = DecodeIn(FrameType::kBlocks, b);
  ExpectCorruption(empty, {"BLOCKS", "empty block range"});
  EXPECT_EQ(empty.message().find("exceed"), std::string::npos) << "0 blocks do not exceed a cap: " << empty.message();
  b = GoodBlocks();
  b.set_block_count(kMaxBatchBytes / kBlock0 + 1);  // 129 blocks of 64 KiB
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"129 blocks of 65536 bytes exceed the batch cap"});
  b.set_block_count(0xFFFFFFFFu);
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"exceed the batch cap"});
}

TEST(DecodeFrameTest, BlocksWithBadLengthsOrHashesAreRejected) {
  Blocks b = GoodBlocks();
  b.set_raw_length(b.raw_length() - 1);
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"raw length 131071 does not match"});
  b = GoodBlocks();
  b.add_hashes(7);
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"3 hashes for 2 blocks"});
  b.clear_hashes();
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"0 hashes for 2 blocks"});
  b = GoodBlocks();
  b.mutable_payload()->pop_back();
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"uncompressed payload of 131071 bytes, expected 131072"});
  b.mutable_payload()->append("xy");
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"uncompressed payload of 131073 bytes"});
  b = GoodBlocks();
  b.set_compression(COMPRESSION_ZSTD);
  b.mutable_payload()->push_back('x');
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"compressed payload of 131073 bytes for 131072 raw bytes"});
  b.clear_payload();
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"compressed payload of 0 bytes"});
  b = GoodBlocks();
  b.set_compression(static_cast<Compression>(2));
  ExpectCorruption(DecodeIn(FrameType::kBlocks, b), {"unknown compression 2"});
}

TEST(DecodeFrameTest, ZeroesAreCheckedAgainstTheVolume) {
  Zeroes z = SmallZeroes();
  z.set_first_block(0);
  z.set_block_count(kBlocks1);
  EXPECT_TRUE(DecodeIn(FrameType::kZeroes, z).ok());
  z.set_block_count(kBlocks1 + 1);
  ExpectCorruption(DecodeIn(FrameType::kZeroes, z), {"ZEROES", "lie past the end of volume disk1"});
  z.set_first_block(1);
  z.set_block_count(~std::uint64_t{0});
  ExpectCorruption(DecodeIn(FrameType::kZeroes, z), {"past the end"});
  z.set_block_count(0);
  ExpectCorruption(DecodeIn(FrameType::kZeroes, z), {"empty block range at block 1"});
  z.set_block_count(1);
  z.set_volume(7);
  ExpectCorruption(DecodeIn(FrameType::kZeroes, z), {"volume index 7"});
}

TEST(DecodeFrameTest, CycleEndIsCheckedAgainstTheSession) {
  CycleEnd e;
  e.set_cycle_id(9);
  VolumeCount* v = e.add_volumes();
  v->set_volume(1);
  v->set_data_blocks(kBlocks1);
  v->set_zero_blocks(0);
  v->set_kept_blocks(0);
  EXPECT_TRUE(DecodeIn(FrameType::kCycleEnd, e).ok());
  e.set_cycle_id(0);
  ExpectCorruption(DecodeIn(FrameType::kCycleEnd, e), {"CYCLE_END", "cycle id 0"});
  e.set_cycle_id(9);
  v->set_volume(2);
  ExpectCorruption(DecodeIn(FrameType::kCycleEnd, e), {"volume index 2"});
  v->set_volume(1);
  for (int field = 0; field < 3; ++field) {
    VolumeCount bad = *v;
    if (field == 0) bad.set_data_blocks(kBlocks1 + 1);
    if (field == 1) bad.set_zero_blocks(kBlocks1 + 1);
    if (field == 2) bad.set_kept_blocks(~std::uint64_t{0});
    CycleEnd e2 = e;
    *e2.mutable_volumes(0) = bad;
    ExpectCorruption(DecodeIn(FrameType::kCycleEnd, e2), {"counts exceed volume disk1"});
  }
}

TEST(DecodeFrameTest, CycleEndMatchedBlocksAreCheckedAgainstTheVolume) {
  CycleEnd e;
  e.set_cycle_id(9);
  VolumeCount* v = e.add_volumes();
  v->set_volume(1);
  v->set_data_blocks(2);
  v->set_matched_blocks(kBlocks1 - 2);
  EXPECT_TRUE(DecodeIn(FrameType::kCycleEnd, e).ok());
  v->set_matched_blocks(kBlocks1);  // the sum is the receiver's business, each count is the gate's
  EXPECT_TRUE(DecodeIn(FrameType::kCycleEnd, e).ok());
  for (std::uint64_t matched : {kBlocks1 + 1, ~std::uint64_t{0}}) {
    v->set_matched_blocks(matched);
    ExpectCorruption(DecodeIn(FrameType::kCycleEnd, e), {"CYCLE_END frame", "counts exceed volume disk1"});
  }
}

// ---- comparing cycles: CYCLE_BEGIN's hash window, REPLICA_HASHES, HASH_CREDIT ----

// A resync or verify of both volumes of the session: every block, a window.
CycleBegin GoodComparingCycleBegin(CycleMode mode) {
  CycleBegin c;
  c.set_cycle_id(9);
  c.set_mode(mode);
  c.set_hash_window_blocks(1024);
  const bool verify = mode == CYCLE_MODE_VERIFY;
  for (std::uint32_t volume : {0u, 1u}) {
    VolumeCycle* v = c.add_volumes();
    v->set_volume(volume);
    v->set_epoch(verify ? 0 : 5);
    v->set_base_epoch(verify ? 0 : 4);
    v->set_block_count(volume == 0 ? kBlocks0 : kBlocks1);
  }
  return c;
}

TEST(DecodeFrameTest, ComparingCyclesAreAccepted) {
  EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, GoodComparingCycleBegin(CYCLE_MODE_RESYNC)).ok());
  core::Result<Message> m = DecodeFrame(Raw(FrameType::kCycleBegin, GoodComparingCycleBegin(CYCLE_MODE_VERIFY)),
                                        Session());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(std::get<CycleBegin>(*m).mode(), CYCLE_MODE_VERIFY);
  EXPECT_EQ(std::get<CycleBegin>(*m).hash_window_blocks(), 1024u);
  // One volume of the session is enough; it is covered whole.
  CycleBegin c = GoodComparingCycleBegin(CYCLE_MODE_RESYNC);
  c.mutable_volumes()->RemoveLast();
  EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, c).ok());
}

TEST(DecodeFrameTest, ComparingCycleNeedsAHashWindowOfOneTo2To20Blocks) {
  for (CycleMode mode : {CYCLE_MODE_RESYNC, CYCLE_MODE_VERIFY}) {
    SCOPED_TRACE(mode);
    CycleBegin c = GoodComparingCycleBegin(mode);
    c.set_hash_window_blocks(0);
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c),
                     {"CYCLE_BEGIN frame", "hash window of 0 blocks", "comparing cycle"});
    c.set_hash_window_blocks(kMaxHashWindowBlocks + 1);
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"CYCLE_BEGIN frame", "hash window of 1048577 blocks"});
    c.set_hash_window_blocks(~std::uint32_t{0});
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"hash window of 4294967295 blocks"});
    for (std::uint32_t window : {1u, kMaxHashWindowBlocks}) {
      c.set_hash_window_blocks(window);
      EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, c).ok()) << window;
    }
  }
}

TEST(DecodeFrameTest, CycleThatComparesNothingMustNotCarryAHashWindow) {
  CycleBegin c = GoodCycleBegin();  // incremental
  c.set_hash_window_blocks(1);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c),
                   {"CYCLE_BEGIN frame", "hash window of 1 blocks", "compares nothing"});
  c.set_mode(CYCLE_MODE_FULL);
  c.mutable_volumes(0)->set_base_epoch(0);
  c.mutable_volumes(1)->set_base_epoch(0);
  c.mutable_volumes(1)->set_block_count(kBlocks0);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"hash window of 1 blocks", "compares nothing"});
  c.set_hash_window_blocks(0);
  EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, c).ok());
  c.set_hash_window_blocks(kMaxHashWindowBlocks);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"hash window of 1048576 blocks", "compares nothing"});
}

TEST(DecodeFrameTest, RecoveryPointsAreZeroTo24) {
  CycleBegin c = GoodCycleBegin();
  for (std::uint32_t n : {0u, 1u, kMaxRecoveryPoints}) {
    c.set_recovery_points(n);
    EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, c).ok()) << n;
  }
  c.set_recovery_points(kMaxRecoveryPoints + 1);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"CYCLE_BEGIN frame", "recovery_points 25", "0 to 24"});
  c.set_recovery_points(~std::uint32_t{0});
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"recovery_points 4294967295"});
}

TEST(FeatureFlagsTest, RecoveryPointsIsBit3AndKnown) {
  EXPECT_EQ(kFeatureRecoveryPoints, std::uint64_t{1} << 3);
  EXPECT_NE(kKnownFeatures & kFeatureRecoveryPoints, 0u);
}

TEST(DecodeFrameTest, VerifyCycleWithAnEpochIsRejected) {
  for (int field = 0; field < 2; ++field) {
    CycleBegin c = GoodComparingCycleBegin(CYCLE_MODE_VERIFY);
    if (field == 0) c.mutable_volumes(1)->set_epoch(5);
    if (field == 1) c.mutable_volumes(1)->set_base_epoch(4);
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"CYCLE_BEGIN frame", "a verify cycle with an epoch"});
  }
}

TEST(DecodeFrameTest, ComparingCycleCoveringFewerOrMoreThanAllBlocksIsRejected) {
  for (CycleMode mode : {CYCLE_MODE_RESYNC, CYCLE_MODE_VERIFY}) {
    SCOPED_TRACE(mode);
    CycleBegin c = GoodComparingCycleBegin(mode);
    c.mutable_volumes(1)->set_block_count(kBlocks1 - 1);
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c),
                     {"CYCLE_BEGIN frame", "a comparing cycle covers 255 of the 256 blocks of volume disk1"});
    c.mutable_volumes(1)->set_block_count(0);
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"covers 0 of the 256 blocks of volume disk1"});
    c.mutable_volumes(1)->set_block_count(kBlocks1 + 1);
    ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"CYCLE_BEGIN frame", "volume disk1"});
  }
}

TEST(DecodeFrameTest, ResyncBaseEpochMayBeAtOrAfterItsEpoch) {
  // The base of a resync is the replica's committed epoch, which may come
  // from a source journal that was since recreated.
  for (std::uint64_t base : {5u, 6u, 1000u}) {
    CycleBegin c = GoodComparingCycleBegin(CYCLE_MODE_RESYNC);
    c.mutable_volumes(0)->set_base_epoch(base);
    EXPECT_TRUE(DecodeIn(FrameType::kCycleBegin, c).ok()) << base;
  }
  // Its epoch is still the source's, never 0.
  CycleBegin c = GoodComparingCycleBegin(CYCLE_MODE_RESYNC);
  c.mutable_volumes(0)->set_epoch(0);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"CYCLE_BEGIN frame", "epoch 0 for volume disk0"});
  // A full cycle's base stays below its epoch.
  c = GoodComparingCycleBegin(CYCLE_MODE_RESYNC);
  c.set_mode(CYCLE_MODE_FULL);
  c.set_hash_window_blocks(0);
  c.mutable_volumes(0)->set_base_epoch(5);
  ExpectCorruption(DecodeIn(FrameType::kCycleBegin, c), {"base epoch not before"});
}

// `count` xxh3-128 hashes of REPLICA_HASHES, 16 bytes each.
std::string HashBytes(std::uint64_t count) {
  std::string out;
  for (std::uint64_t i = 0; i < count; ++i) {
    std::vector<std::byte> h(kReplicaHashBytes);
    core::StoreLe64(h.data(), 0x9E3779B97F4A7C15ULL * (i + 1));
    core::StoreLe64(h.data() + 8, ~i);
    out.append(reinterpret_cast<const char*>(h.data()), h.size());
  }
  return out;
}

ReplicaHashes GoodReplicaHashes(std::uint32_t volume, std::uint64_t first_block, std::uint64_t count) {
  ReplicaHashes m;
  m.set_volume(volume);
  m.set_first_block(first_block);
  m.set_hashes(HashBytes(count));
  return m;
}

TEST(DecodeFrameTest, ReplicaHashesRoundTripThroughTheWire) {
  ReplicaHashes m = GoodReplicaHashes(1, kBlocks1 - 3, 3);  // ends exactly at the end of disk1
  HashCredit credit;
  credit.set_consumed_blocks(kBlocks0 + 7);
  MemoryStream out;
  FrameWriter w(out);
  ASSERT_TRUE(w.Send(FrameType::kReplicaHashes, m).ok());
  ASSERT_TRUE(w.Send(FrameType::kHashCredit, credit).ok());
  MemoryStream in(out.output());
  FrameReader r(in);
  core::Result<Message> got = ReadMessage(r, Session(), {FrameType::kReplicaHashes});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  const ReplicaHashes& back = std::get<ReplicaHashes>(*got);
  EXPECT_EQ(back.volume(), 1u);
  EXPECT_EQ(back.first_block(), kBlocks1 - 3);
  EXPECT_EQ(back.hashes(), m.hashes());
  // Block i's hash: bytes [16 i, 16 i + 8) are the low 64 bits, then the high ones.
  const auto* bytes = reinterpret_cast<const std::byte*>(back.hashes().data());
  EXPECT_EQ(core::LoadLe64(bytes + 2 * kReplicaHashBytes), 0x9E3779B97F4A7C15ULL * 3);
  EXPECT_EQ(core::LoadLe64(bytes + 2 * kReplicaHashBytes + 8), ~std::uint64_t{2});
  got = ReadMessage(r, Session(), {FrameType::kHashCredit});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(std::get<HashCredit>(*got).consumed_blocks(), kBlocks0 + 7);
  EXPECT_EQ(r.Next().status().code(), Code::kEndOfData);
}

TEST(DecodeFrameTest, ReplicaHashesOfAWholeFrameFitItsCap) {
  // The largest REPLICA_HASHES: 16384 hashes, the largest volume index and
  // first block a session allows.
  SessionContext big;
  for (std::size_t i = 0; i < kMaxVolumes; ++i) {
    big.volumes.push_back(Volume("v" + std::to_string(i), kMaxVolumeBlocks * 4096, 4096));
  }
  ReplicaHashes m = GoodReplicaHashes(kMaxVolumes - 1, kMaxVolumeBlocks - kMaxReplicaHashesPerFrame,
                                      kMaxReplicaHashesPerFrame);
  ASSERT_LE(m.ByteSizeLong(), MaxBodyBytes(FrameType::kReplicaHashes));
  EXPECT_TRUE(DecodeIn(FrameType::kReplicaHashes, m, big).ok());
  MemoryStream out;
  FrameWriter w(out);
  EXPECT_TRUE(w.Send(FrameType::kReplicaHashes, m).ok());
}

TEST(DecodeFrameTest, ReplicaHashesNotAMultipleOf16BytesAreRejected) {
  for (std::size_t length : {std::size_t{1}, std::size_t{15}, std::size_t{17}, std::size_t{8 * 16 + 8}}) {
    ReplicaHashes m = GoodReplicaHashes(1, 0, 9);
    m.mutable_hashes()->resize(length);
    ExpectCorruption(DecodeIn(FrameType::kReplicaHashes, m),
                     {"REPLICA_HASHES frame", std::to_string(length) + " hash bytes, not a multiple of 16"});
  }
}

TEST(DecodeFrameTest, ReplicaHashesOfNoneOrMoreThan16384BlocksAreRejected) {
  ReplicaHashes m = GoodReplicaHashes(1, 0, 0);
  ExpectCorruption(DecodeIn(FrameType::kReplicaHashes, m), {"REPLICA_HASHES frame", "0 hashes (1 to 16384 allowed)"});
  SessionContext big;
  big.volumes.push_back(Volume("big", 1ULL << 40, 4096));
  m = GoodReplicaHashes(0, 0, kMaxReplicaHashesPerFrame);
  EXPECT_TRUE(DecodeIn(FrameType::kReplicaHashes, m, big).ok());
  m = GoodReplicaHashes(0, 0, kMaxReplicaHashesPerFrame + 1);
  ASSERT_LE(m.ByteSizeLong(), MaxBodyBytes(FrameType::kReplicaHashes));  // the count, not the length cap, rejects it
  ExpectCorruption(DecodeIn(FrameType::kReplicaHashes, m, big), {"REPLICA_HASHES frame", "16385 hashes"});
}

TEST(DecodeFrameTest, ReplicaHashesPastTheVolumeAreRejected) {
  ReplicaHashes m = GoodReplicaHashes(1, kBlocks1 - 3, 4);
  ExpectCorruption(DecodeIn(FrameType::kReplicaHashes, m),
                   {"REPLICA_HASHES frame", "blocks [253, +4) lie past the end of volume disk1 (256 blocks)"});
  m = GoodReplicaHashes(0, kBlocks0, 1);
  ExpectCorruption(DecodeIn(FrameType::kReplicaHashes, m), {"blocks [161, +1) lie past the end of volume disk0"});
  m = GoodReplicaHashes(0, ~std::uint64_t{0}, 2);
  ExpectCorruption(DecodeIn(FrameType::kReplicaHashes, m), {"REPLICA_HASHES frame", "past the end"});
  m = GoodReplicaHashes(2, 0, 1);
  ExpectCorruption(DecodeIn(FrameType::kReplicaHashes, m),
                   {"REPLICA_HASHES frame", "volume index 2 is not one of the 2 volumes"});
  m = GoodReplicaHashes(0, kBlocks0 - 1, 1);  // the short last block has a hash like any other
  EXPECT_TRUE(DecodeIn(FrameType::kReplicaHashes, m).ok());
}

TEST(DecodeFrameTest, HashCreditPastEveryBlockOfTheSessionIsRejected) {
  HashCredit c;
  EXPECT_TRUE(DecodeIn(FrameType::kHashCredit, c).ok());  // 0: nothing consumed yet
  c.set_consumed_blocks(kBlocks0 + kBlocks1);
  EXPECT_TRUE(DecodeIn(FrameType::kHashCredit, c).ok());
  c.set_consumed_blocks(kBlocks0 + kBlocks1 + 1);
  ExpectCorruption(DecodeIn(FrameType::kHashCredit, c),
                   {"HASH_CREDIT frame", "consumed 418 hashes, the volumes have 417 blocks"});
  c.set_consumed_blocks(~std::uint64_t{0});
  ExpectCorruption(DecodeIn(FrameType::kHashCredit, c), {"HASH_CREDIT frame", "consumed 18446744073709551615"});
}

TEST(DecodeFrameTest, RemoveGuestNeedsAValidJobName) {
  RemoveGuest m;
  m.set_job("vm100-1");
  core::Result<Message> got = DecodeFrame(Raw(FrameType::kRemoveGuest, m), Session());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(std::get<RemoveGuest>(*got).job(), "vm100-1");
  for (const char* bad : {"", "..", "a/b", "vm\n1"}) {
    m.set_job(bad);
    ExpectCorruption(DecodeIn(FrameType::kRemoveGuest, m), {"REMOVE_GUEST frame", "bad job name"});
  }
  m.set_job(std::string(65, 'a'));
  ExpectCorruption(DecodeIn(FrameType::kRemoveGuest, m), {"REMOVE_GUEST frame", "bad job name"});
}

TEST(DecodeFrameTest, RemoveGuestBeforeHelloIsRejected) {
  RemoveGuest m;
  m.set_job("vm100-1");
  ExpectCorruption(DecodeIn(FrameType::kRemoveGuest, m, SessionContext{}), {"REMOVE_GUEST frame", "before"});
}

TEST(DecodeFrameTest, RemoveGuestIsAKnownFeature) {
  EXPECT_EQ(kFeatureRemoveGuest, 1ULL << 4);
  EXPECT_NE(kKnownFeatures & kFeatureRemoveGuest, 0u);
  EXPECT_STREQ(FrameTypeName(FrameType::kRemoveGuest), "REMOVE_GUEST");
}

TEST(DecodeFrameTest, NewFrameTypesHaveTheirNames) {
  EXPECT_STREQ(FrameTypeName(FrameType::kReplicaHashes), "REPLICA_HASHES");
  EXPECT_STREQ(FrameTypeName(FrameType::kHashCredit), "HASH_CREDIT");
  EXPECT_EQ(static_cast<int>(FrameType::kReplicaHashes), 12);
  EXPECT_EQ(static_cast<int>(FrameType::kHashCredit), 13);
  EXPECT_EQ(kFeatureChecksumResync, 4u);
  EXPECT_NE(kKnownFeatures & kFeatureChecksumResync, 0u);
}

TEST(DecodeFrameTest, AckCarriesOneEpochPerVolume) {
  Ack a;
  a.set_cycle_id(9);
  a.add_committed_epochs(5);
  ExpectCorruption(DecodeIn(FrameType::kAck, a), {"ACK", "committed epochs for 1 volumes"});
  a.add_committed_epochs(5);
  EXPECT_TRUE(DecodeIn(FrameType::kAck, a).ok());
  a.add_committed_epochs(5);
  ExpectCorruption(DecodeIn(FrameType::kAck, a), {"committed epochs for 3 volumes"});
}

TEST(DecodeFrameTest, ErrorMessageIsCutToOneBoundedLine) {
  Error e;
  e.set_code(static_cast<std::uint32_t>(Code::kCorruption));
  e.set_message("first line\nsecond\tline\r\x1b[31m" + std::string(2 * kMaxMessageBytes, 'x'));
  core::Result<Message> m = DecodeFrame(Raw(FrameType::kError, e), SessionContext{});
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const std::string& text = std::get<Error>(*m).message();
  EXPECT_EQ(text.size(), kMaxMessageBytes);
  EXPECT_EQ(text.substr(0, 23), "first line second line ");
  for (char c : text) EXPECT_GE(static_cast<unsigned char>(c), 0x20u);
}

// ---- ReadMessage ----

TEST(ReadMessageTest, PeerErrorBecomesAStatusWithItsCode) {
  Error e;
  e.set_code(static_cast<std::uint32_t>(Code::kOutOfRange));
  e.set_message("replica of disk0 is at cycle 3, not 4");
  MemoryStream in(Wire({{FrameType::kError, &e}}));
  FrameReader r(in);
  core::Status s = ReadMessage(r, Session(), {FrameType::kAck}).status();
  EXPECT_EQ(s.code(), Code::kOutOfRange);
  EXPECT_EQ(s.message(), "peer: replica of disk0 is at cycle 3, not 4");
}

TEST(ReadMessageTest, UnknownErrorCodeBecomesAborted) {
  for (std::uint32_t code : {0u, 11u, 1000u}) {
    Error e;
    e.set_code(code);
    MemoryStream in(Wire({{FrameType::kError, &e}}));
    FrameReader r(in);
    EXPECT_EQ(ReadMessage(r, Session(), {FrameType::kAck}).status().code(), Code::kAborted) << code;
  }
}

TEST(ReadMessageTest, UnexpectedFrameIsAProtocolError) {
  Zeroes z = SmallZeroes();
  z.set_first_block(16);
  MemoryStream in(Wire({{FrameType::kZeroes, &z}}));
  FrameReader r(in);
  ExpectCorruption(ReadMessage(r, Session(), {FrameType::kStagedHashes, FrameType::kStagedEnd}).status(),
                   {"protocol error: ZEROES frame where STAGED_HASHES or STAGED_END was expected"});
}

TEST(ReadMessageTest, ExpectedFrameIsDecoded) {
  Zeroes z = SmallZeroes();
  z.set_first_block(16);
  MemoryStream in(Wire({{FrameType::kZeroes, &z}}));
  FrameReader r(in);
  core::Result<Message> m = ReadMessage(r, Session(), {FrameType::kBlocks, FrameType::kZeroes});
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(std::get<Zeroes>(*m).first_block(), 16u);
}

// ---- RateLimitedStream ----

TEST(RateLimitedStreamTest, AverageRateStaysUnderTheLimit) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  FdStream writer(fds[0], fds[0], true);
  constexpr double kBytesPerSecond = 2e6;
  constexpr std::size_t kTotalBytes = 1'000'000;  // 0.5 s worth
  std::uint64_t drained = 0;
  std::thread drain([&] {
    char buffer[65536];
    ssize_t n;
    while ((n = ::read(fds[1], buffer, sizeof buffer)) > 0) drained += static_cast<std::uint64_t>(n);
  });
  RateLimitedStream limited(writer, kBytesPerSecond);
  std::vector<std::byte> chunk(50'000, std::byte{0x61});
  auto start = std::chrono::steady_clock::now();
  for (std::size_t sent = 0; sent < kTotalBytes; sent += chunk.size()) ASSERT_TRUE(limited.WriteAll(chunk).ok());
  double elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  limited.CloseWrite();
  drain.join();
  ::close(fds[1]);
  EXPECT_EQ(drained, kTotalBytes);
  EXPECT_GE(elapsed_seconds, 0.8 * kTotalBytes / kBytesPerSecond);
}

}  // namespace
}  // namespace blkrep::proto

namespace blkrep::proto {
namespace {

TEST(DecodeFrameVolumeCapTest, AVolumeOfMoreThan2To32BlocksIsRefusedBeforeAnyBitmapIsSized) {
  // A valid size (2^60 bytes) in 4 KiB blocks is 2^48 blocks: a receiver
  // would size a 32 TiB bitmap for it.
  Hello h;
  h.set_protocol_version(kProtocolVersion);
  h.set_min_protocol_version(kProtocolVersion);
  h.set_guest("vm100");
  h.set_job("vm100-1");
  VolumeInfo* v = h.add_volumes();
  v->set_name("disk0");
  v->set_size_bytes(1ULL << 60);
  v->set_block_size_bytes(4096);
  RawFrame f;
  f.type = FrameType::kHello;
  std::string body = h.SerializeAsString();
  f.body.resize(body.size());
  std::memcpy(f.body.data(), body.data(), body.size());
  auto decoded = DecodeFrame(f, SessionContext{});
  EXPECT_EQ(decoded.status().code(), core::Code::kCorruption);
  EXPECT_NE(decoded.status().message().find("more than 4294967296 blocks"), std::string::npos)
      << decoded.status().ToString();
  // 2^32 blocks exactly is fine.
  v->set_size_bytes(4096ULL << 32);
  body = h.SerializeAsString();
  f.body.assign(reinterpret_cast<const std::byte*>(body.data()), reinterpret_cast<const std::byte*>(body.data()) + body.size());
  EXPECT_TRUE(DecodeFrame(f, SessionContext{}).ok());
}

}  // namespace
}  // namespace blkrep::proto

namespace blkrep::proto {
namespace {

// A pipe-free Stream that records what is written.
class RecordingStream final : public Stream {
 public:
  core::Status ReadFull(std::span<std::byte> out) override {
    if (at_ + out.size() > bytes_.size()) return core::Status::EndOfData("end");
    std::memcpy(out.data(), bytes_.data() + at_, out.size());
    at_ += out.size();
    return core::Status::Ok();
  }
  core::Status WriteAll(std::span<const std::byte> data) override {
    bytes_.insert(bytes_.end(), data.begin(), data.end());
    return core::Status::Ok();
  }
  std::vector<std::byte> bytes_;
  std::size_t at_ = 0;
};

TEST(SendBlocksTest, APayloadSentFromWhereItIsDecodesLikeAnyBlocksFrame) {
  SessionContext session;
  VolumeInfo v;
  v.set_name("disk0");
  v.set_size_bytes(1 << 20);
  v.set_block_size_bytes(4096);
  session.volumes.push_back(v);
  for (std::size_t length : {std::size_t{4096}, std::size_t{3 * 4096}, std::size_t{200}}) {
    std::vector<std::byte> payload(length);
    for (std::size_t i = 0; i < length; ++i) payload[i] = static_cast<std::byte>(i * 7 + 1);
    Blocks meta;
    meta.set_volume(0);
    meta.set_first_block(5);
    meta.set_block_count(static_cast<std::uint32_t>(length == 200 ? 1 : length / 4096));
    meta.set_compression(length == 200 ? COMPRESSION_ZSTD : COMPRESSION_NONE);
    meta.set_raw_length(static_cast<std::uint32_t>(length == 200 ? 4096 : length));
    for (std::uint32_t i = 0; i < meta.block_count(); ++i) meta.add_hashes(1000 + i);
    RecordingStream out;
    FrameWriter writer(out);
    ASSERT_TRUE(writer.SendBlocks(meta, payload).ok());
    EXPECT_EQ(writer.bytes_sent(), out.bytes_.size());
    FrameReader reader(out);
    auto frame = reader.Next();
    ASSERT_TRUE(frame.ok()) << frame.status().ToString();
    auto decoded = DecodeFrame(*frame, session);
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    const Blocks& b = std::get<Blocks>(*decoded);
    Blocks expected = meta;
    expected.set_payload(payload.data(), payload.size());
    EXPECT_EQ(b.SerializeAsString(), expected.SerializeAsString()) << length;
  }
}

}  // namespace
}  // namespace blkrep::proto
