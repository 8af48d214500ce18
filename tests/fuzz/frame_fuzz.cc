// Fuzz target for the wire protocol's gates (docs/wire-protocol.md):
// FrameReader (header checks, length caps, sequence, checksum) and
// DecodeFrame (every field against the session), then ReadMessage.
//
// Input: u8 mode, a session recipe (1-3 volumes, block sizes and sizes taken
// from the input), then either
//   raw:        the rest is the byte stream as it came off the wire, or
//   structured: a recipe for up to 16 frames. Each frame's message is built
//               from the input (volume indexes, block ranges, counts and
//               lengths near the session's edges, or raw protobuf bytes),
//               its body optionally mutated (bit flip, cut, appended bytes),
//               then framed with a correct checksum, so the fuzzer gets past
//               the checksum to the validator. A frame may instead get a
//               corrupted header, a wrong sequence, or cut the stream.
// Invariants:
//   - the reader fails only with kEndOfData, kAborted or kCorruption; it
//     returns the well-framed frames before the first bad one exactly, never
//     a body above its type's cap, and a bad header or a cut stops it with
//     kCorruption/kAborted (kEndOfData exactly at a frame boundary);
//   - DecodeFrame fails only with kCorruption and a one-line message, and
//     what it accepts keeps the gate's promises (indexes, ranges inside the
//     volume, lengths, counts, caps, the hash window and epochs of each
//     cycle mode, REPLICA_HASHES of whole 16-byte hashes, HASH_CREDIT
//     within the session's blocks), re-checked here independently;
//   - an accepted HELLO becomes the session for the frames after it, as in
//     the receiver.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "proto/frame.h"
#include "tests/fuzz/fuzz_util.h"

namespace blkrep::fuzz {
namespace {

namespace proto = blkrep::proto;
using core::Code;
using proto::FrameType;

// A Stream over bytes in memory, read-only. Obeys the Stream contract:
// kEndOfData at the end before the first byte, kAborted in the middle.
class InputStream final : public proto::Stream {
 public:
  explicit InputStream(std::span<const std::byte> data) : data_(data) {}
  core::Status ReadFull(std::span<std::byte> out) override {
    if (out.empty()) return core::Status::Ok();
    std::size_t left = data_.size() - at_;
    if (left == 0) return core::Status::EndOfData("end of input");
    std::size_t n = std::min(left, out.size());
    std::memcpy(out.data(), data_.data() + at_, n);
    at_ += n;
    return n < out.size() ? core::Status::Aborted("input cut off") : core::Status::Ok();
  }
  core::Status WriteAll(std::span<const std::byte>) override {
    return core::Status::Internal("read-only stream");
  }

 private:
  std::span<const std::byte> data_;
  std::size_t at_ = 0;
};

// ---- the session ----

proto::SessionContext SessionFrom(InputReader& in) {
  proto::SessionContext s;
  int count = 1 + in.U8() % 3;
  for (int i = 0; i < count; ++i) {
    proto::VolumeInfo v;
    v.set_name("v" + std::to_string(i));
    v.set_block_size_bytes(proto::kMinBlockSizeBytes << (in.U8() % 9));  // 4 KiB .. 1 MiB
    std::uint64_t size;
    switch (in.U8() % 4) {
      case 0: size = 1 + in.U16(); break;                       // under a few blocks
      case 1: size = 1 + in.U32() % (64ULL << 20); break;     // up to 64 MiB
      case 2: size = v.block_size_bytes() * (1 + std::uint64_t{in.U8()}); break;  // whole blocks
      default: size = 1 + in.InterestingU64() % proto::kMaxVolumeSizeBytes; break;
    }
    v.set_size_bytes(size);
    s.volumes.push_back(v);
  }
  return s;
}

// ---- checks of what the gates accept ----

void CheckRange(const proto::SessionContext& s, std::uint32_t volume, std::uint64_t first,
                std::uint64_t count, const char* what) {
  BLKREP_FUZZ_CHECK(volume < s.volumes.size(), std::string(what) + ": accepted a volume index out of range");
  std::uint64_t blocks = s.BlockCount(volume);
  BLKREP_FUZZ_CHECK(count >= 1 && first < blocks && count <= blocks - first,
                    std::string(what) + ": accepted a block range outside the volume");
}

void CheckName(const std::string& name, const char* what) {
  BLKREP_FUZZ_CHECK(proto::ValidWireName(name), std::string("HELLO: accepted a bad ") + what + " name");
  BLKREP_FUZZ_CHECK(name.find('/') == std::string::npos && name != "." && name != "..",
                    "HELLO: accepted a name that escapes a directory");
}

void CheckAccepted(const proto::Message& m, const proto::SessionContext& s) {
  if (const auto* h = std::get_if<proto::Hello>(&m)) {
    BLKREP_FUZZ_CHECK(h->protocol_version() >= 1 && h->min_protocol_version() <= h->protocol_version(),
                      "HELLO: accepted a bad version range");
    CheckName(h->guest(), "guest");
    CheckName(h->job(), "job");
    BLKREP_FUZZ_CHECK(h->volumes_size() >= 1 && static_cast<std::size_t>(h->volumes_size()) <= proto::kMaxVolumes,
                      "HELLO: accepted a bad volume count");
    for (int i = 0; i < h->volumes_size(); ++i) {
      const proto::VolumeInfo& v = h->volumes(i);
      CheckName(v.name(), "volume");
      std::uint32_t bs = v.block_size_bytes();
      BLKREP_FUZZ_CHECK(bs >= proto::kMinBlockSizeBytes && bs <= proto::kMaxBlockSizeBytes && (bs & (bs - 1)) == 0,
                        "HELLO: accepted a bad block size");
      BLKREP_FUZZ_CHECK(v.size_bytes() >= 1 && v.size_bytes() <= proto::kMaxVolumeSizeBytes,
                        "HELLO: accepted a bad volume size");
      for (int j = 0; j < i; ++j) BLKREP_FUZZ_CHECK(h->volumes(j).name() != v.name(), "HELLO: duplicate volume");
    }
  } else if (const auto* r = std::get_if<proto::HelloReply>(&m)) {
    BLKREP_FUZZ_CHECK(r->protocol_version() >= 1 && r->protocol_version() <= proto::kProtocolVersion,
                      "HELLO_REPLY: accepted a version not spoken here");
    BLKREP_FUZZ_CHECK(static_cast<std::size_t>(r->volumes_size()) == s.volumes.size(),
                      "HELLO_REPLY: accepted a wrong number of volume states");
    for (int i = 0; i < r->volumes_size(); ++i) {
      BLKREP_FUZZ_CHECK(r->volumes(i).staged_blocks() <= s.BlockCount(static_cast<std::uint32_t>(i)),
                        "HELLO_REPLY: accepted more staged blocks than the volume has");
    }
  } else if (const auto* sh = std::get_if<proto::StagedHashes>(&m)) {
    BLKREP_FUZZ_CHECK(static_cast<std::uint32_t>(sh->hashes_size()) <= proto::kMaxHashesPerFrame,
                      "STAGED_HASHES: accepted too many hashes");
    CheckRange(s, sh->volume(), sh->first_block(), static_cast<std::uint64_t>(sh->hashes_size()), "STAGED_HASHES");
  } else if (const auto* k = std::get_if<proto::Keep>(&m)) {
    BLKREP_FUZZ_CHECK(static_cast<std::uint32_t>(k->hashes_size()) <= proto::kMaxHashesPerFrame,
                      "KEEP: accepted too many hashes");
    CheckRange(s, k->volume(), k->first_block(), static_cast<std::uint64_t>(k->hashes_size()), "KEEP");
  } else if (const auto* c = std::get_if<proto::CycleBegin>(&m)) {
    BLKREP_FUZZ_CHECK(c->cycle_id() != 0, "CYCLE_BEGIN: accepted cycle id 0");
    BLKREP_FUZZ_CHECK(c->mode() >= proto::CYCLE_MODE_FULL && c->mode() <= proto::CYCLE_MODE_VERIFY,
                      "CYCLE_BEGIN: accepted an unknown mode");
    const bool resync = c->mode() == proto::CYCLE_MODE_RESYNC;
    const bool verify = c->mode() == proto::CYCLE_MODE_VERIFY;
    if (resync || verify) {
      BLKREP_FUZZ_CHECK(c->hash_window_blocks() >= 1 && c->hash_window_blocks() <= proto::kMaxHashWindowBlocks,
                        "CYCLE_BEGIN: accepted a comparing cycle with a bad hash window");
    } else {
      BLKREP_FUZZ_CHECK(c->hash_window_blocks() == 0, "CYCLE_BEGIN: accepted a hash window for a cycle that compares nothing");
    }
    BLKREP_FUZZ_CHECK(c->volumes_size() >= 1, "CYCLE_BEGIN: accepted a cycle of no volume");
    std::vector<bool> seen(s.volumes.size());
    for (const proto::VolumeCycle& v : c->volumes()) {
      BLKREP_FUZZ_CHECK(v.volume() < s.volumes.size() && !seen[v.volume()],
                        "CYCLE_BEGIN: accepted a bad or repeated volume index");
      seen[v.volume()] = true;
      if (verify) {
        BLKREP_FUZZ_CHECK(v.epoch() == 0 && v.base_epoch() == 0, "CYCLE_BEGIN: accepted a verify with an epoch");
      } else {
        BLKREP_FUZZ_CHECK(v.epoch() >= 1 && (resync || v.base_epoch() < v.epoch()), "CYCLE_BEGIN: accepted bad epochs");
      }
      BLKREP_FUZZ_CHECK(v.block_count() <= s.BlockCount(v.volume()), "CYCLE_BEGIN: accepted too many blocks");
      BLKREP_FUZZ_CHECK(!(resync || verify) || v.block_count() == s.BlockCount(v.volume()),
                        "CYCLE_BEGIN: accepted a comparing cycle that does not cover every block");
    }
  } else if (const auto* b = std::get_if<proto::Blocks>(&m)) {
    CheckRange(s, b->volume(), b->first_block(), b->block_count(), "BLOCKS");
    const proto::VolumeInfo& v = s.volumes[b->volume()];
    BLKREP_FUZZ_CHECK(std::uint64_t{b->block_count()} * v.block_size_bytes() <= proto::kMaxBatchBytes,
                      "BLOCKS: accepted a batch over the cap");
    // The raw length, computed here independently of proto::RawLength.
    std::uint64_t start = b->first_block() * v.block_size_bytes();
    std::uint64_t end = std::min(start + std::uint64_t{b->block_count()} * v.block_size_bytes(), v.size_bytes());
    BLKREP_FUZZ_CHECK(b->raw_length() == end - start, "BLOCKS: accepted a wrong raw length");
    BLKREP_FUZZ_CHECK(b->raw_length() <= proto::kMaxBatchBytes, "BLOCKS: raw length over the cap");
    BLKREP_FUZZ_CHECK(static_cast<std::uint32_t>(b->hashes_size()) == b->block_count(),
                      "BLOCKS: accepted a wrong number of hashes");
    if (b->compression() == proto::COMPRESSION_NONE) {
      BLKREP_FUZZ_CHECK(b->payload().size() == b->raw_length(), "BLOCKS: accepted a payload of the wrong length");
    } else {
      BLKREP_FUZZ_CHECK(b->compression() == proto::COMPRESSION_ZSTD, "BLOCKS: accepted an unknown compression");
      BLKREP_FUZZ_CHECK(!b->payload().empty() && b->payload().size() <= b->raw_length(),
                        "BLOCKS: accepted a compressed payload larger than its raw length");
    }
  } else if (const auto* z = std::get_if<proto::Zeroes>(&m)) {
    CheckRange(s, z->volume(), z->first_block(), z->block_count(), "ZEROES");
  } else if (const auto* e = std::get_if<proto::CycleEnd>(&m)) {
    BLKREP_FUZZ_CHECK(e->cycle_id() != 0, "CYCLE_END: accepted cycle id 0");
    for (const proto::VolumeCount& v : e->volumes()) {
      BLKREP_FUZZ_CHECK(v.volume() < s.volumes.size(), "CYCLE_END: accepted a bad volume index");
      std::uint64_t blocks = s.BlockCount(v.volume());
      BLKREP_FUZZ_CHECK(v.data_blocks() <= blocks && v.zero_blocks() <= blocks && v.kept_blocks() <= blocks &&
                            v.matched_blocks() <= blocks,
                        "CYCLE_END: accepted counts over the volume");
    }
  } else if (const auto* rh = std::get_if<proto::ReplicaHashes>(&m)) {
    BLKREP_FUZZ_CHECK(rh->hashes().size() % proto::kReplicaHashBytes == 0,
                      "REPLICA_HASHES: accepted a hash that is not 16 bytes");
    const std::uint64_t count = rh->hashes().size() / proto::kReplicaHashBytes;
    BLKREP_FUZZ_CHECK(count <= proto::kMaxReplicaHashesPerFrame, "REPLICA_HASHES: accepted too many hashes");
    CheckRange(s, rh->volume(), rh->first_block(), count, "REPLICA_HASHES");
  } else if (const auto* hc = std::get_if<proto::HashCredit>(&m)) {
    std::uint64_t total = 0;
    for (std::uint32_t i = 0; i < s.volumes.size(); ++i) total += s.BlockCount(i);
    BLKREP_FUZZ_CHECK(hc->consumed_blocks() <= total, "HASH_CREDIT: accepted more hashes than the volumes have blocks");
  } else if (const auto* rg = std::get_if<proto::RemoveGuest>(&m)) {
    BLKREP_FUZZ_CHECK(proto::ValidWireName(rg->job()), "REMOVE_GUEST: accepted a bad job name");
  } else if (const auto* a = std::get_if<proto::Ack>(&m)) {
    BLKREP_FUZZ_CHECK(static_cast<std::size_t>(a->committed_epochs_size()) == s.volumes.size(),
                      "ACK: accepted a wrong number of epochs");
  } else if (const auto* err = std::get_if<proto::Error>(&m)) {
    BLKREP_FUZZ_CHECK(err->message().size() <= proto::kMaxMessageBytes, "ERROR: message over its cap");
    for (char ch : err->message()) {
      BLKREP_FUZZ_CHECK(static_cast<unsigned char>(ch) >= 0x20, "ERROR: message with a control byte");
    }
  }
}

// Decodes one frame read off the wire, checks the verdict, and adopts an
// accepted HELLO as the session.
void DecodeAndCheck(const proto::RawFrame& frame, proto::SessionContext& session) {
  BLKREP_FUZZ_CHECK(frame.body.size() <= proto::MaxBodyBytes(frame.type), "the reader returned a body over its cap");
  core::Result<proto::Message> m = proto::DecodeFrame(frame, session);
  if (!m.ok()) {
    BLKREP_FUZZ_CHECK(m.status().code() == Code::kCorruption,
                      "DecodeFrame failed with a code other than kCorruption: " + m.status().ToString());
    BLKREP_FUZZ_CHECK(m.status().message().find('\n') == std::string::npos, "DecodeFrame error is not one line");
    return;
  }
  BLKREP_FUZZ_CHECK(m->index() + 1 == static_cast<std::size_t>(frame.type),
                    "DecodeFrame returned a message of another type");
  BLKREP_FUZZ_CHECK(frame.type == FrameType::kHello || frame.type == FrameType::kError || !session.volumes.empty(),
                    "DecodeFrame accepted a frame before HELLO");
  CheckAccepted(*m, session);
  if (const auto* h = std::get_if<proto::Hello>(&*m)) {
    session.volumes.assign(h->volumes().begin(), h->volumes().end());
  }
}

bool ReaderCode(Code code) {
  return code == Code::kEndOfData || code == Code::kAborted || code == Code::kCorruption;
}

// Reads every frame of `wire` and decodes it; then reads it again through
// ReadMessage.
void ReadAll(std::span<const std::byte> wire, const proto::SessionContext& start) {
  {
    InputStream stream(wire);
    proto::FrameReader reader(stream);
    proto::SessionContext session = start;
    for (;;) {
      core::Result<proto::RawFrame> f = reader.Next();
      if (!f.ok()) {
        BLKREP_FUZZ_CHECK(ReaderCode(f.status().code()), "FrameReader failed with " + f.status().ToString());
        break;
      }
      DecodeAndCheck(*f, session);
    }
    BLKREP_FUZZ_CHECK(reader.bytes_received() <= wire.size(), "the reader counted bytes it never read");
  }
  InputStream stream(wire);
  proto::FrameReader reader(stream);
  for (;;) {
    core::Result<proto::Message> m =
        proto::ReadMessage(reader, start, {FrameType::kHello, FrameType::kBlocks, FrameType::kZeroes});
    if (m.ok()) continue;
    BLKREP_FUZZ_CHECK(!m.status().ok(), "a failed ReadMessage has an OK status");
    if (m.status().message().rfind("peer: ", 0) == 0) continue;  // the peer's ERROR, as a status
    if (ReaderCode(m.status().code())) {
      // A protocol error (unexpected type) leaves the stream in step: go on.
      if (m.status().message().rfind("protocol error: ", 0) == 0) continue;
      break;
    }
    BLKREP_FUZZ_CHECK(false, "ReadMessage failed with " + m.status().ToString());
  }
}

// ---- structured frames ----

// Input bytes as 7-bit text: protobuf refuses to parse a string field that
// is not UTF-8, and the builder wants its strings to reach the validator.
std::string Ascii(std::string text) {
  for (char& c : text) c = static_cast<char>(c & 0x7F);
  return text;
}

struct Builder {
  InputReader& in;
  const proto::SessionContext& s;

  std::uint32_t Volume() {
    std::uint8_t pick = in.U8();
    if (pick < 224) return pick % static_cast<std::uint32_t>(s.volumes.size() + 1);  // one past the end too
    return static_cast<std::uint32_t>(in.InterestingU64());
  }
  std::uint64_t Blocks(std::uint32_t volume) {
    return volume < s.volumes.size() ? s.BlockCount(volume) : 1 + in.U8();
  }
  // A first block near the edges of the volume.
  std::uint64_t First(std::uint32_t volume) {
    std::uint64_t blocks = Blocks(volume);
    switch (in.U8() % 6) {
      case 0: return 0;
      case 1: return blocks - 1;
      case 2: return blocks;
      case 3: return blocks - std::min<std::uint64_t>(blocks, in.U8());
      case 4: return in.U64() % blocks;
      default: return in.InterestingU64();
    }
  }
  std::uint64_t Count(std::uint64_t first, std::uint32_t volume) {
    std::uint64_t blocks = Blocks(volume);
    switch (in.U8() % 6) {
      case 0: return 0;
      case 1: return 1 + in.U8() % 4;
      case 2: return first < blocks ? blocks - first : 1;  // up to the end
      case 3: return first < blocks ? blocks - first + 1 : 2;  // one past the end
      case 4: return in.U16();
      default: return in.InterestingU64();
    }
  }
  // How many hashes to send for `wanted` blocks: near it, and only rarely in
  // the tens of thousands (each costs time in every later step).
  std::uint32_t HashCount(std::uint64_t wanted) {
    std::uint32_t n = static_cast<std::uint32_t>(std::min<std::uint64_t>(wanted, 4097));
    switch (in.U8() % 8) {
      case 0: return 0;
      case 1: return n + 1;
      case 2: return n > 0 ? n - 1 : 0;
      case 3: return proto::kMaxHashesPerFrame + (in.U8() & 1);
      default: return n;
    }
  }
  std::string Name() {
    switch (in.U8() % 8) {
      case 0: return "";
      case 1: return "..";
      case 2: return "a/b";
      case 3: return std::string(64 + (in.U8() & 1), 'n');
      case 4: return Ascii(in.String(80));
      case 5: return ".x";
      default: return "n" + std::to_string(in.U8() % 4);
    }
  }
  template <typename M>
  void AddHashes(M& m, std::uint32_t count) {
    for (std::uint32_t i = 0; i < count; ++i) m.add_hashes(0x9E3779B97F4A7C15ULL * i);
  }

  // The message of `type`, serialized.
  std::string Body(FrameType type) {
    switch (type) {
      case FrameType::kHello: {
        proto::Hello h;
        h.set_protocol_version(in.U8() % 3);
        h.set_min_protocol_version(in.U8() % 3);
        h.set_feature_flags(in.InterestingU64());
        h.set_guest(in.U8() % 4 ? "100" : Name());
        h.set_job(in.U8() % 4 ? "100-0" : Name());
        int volumes = in.U8() % 4 ? 1 + in.U8() % 3 : in.U8() % 70;
        for (int i = 0; i < volumes; ++i) {
          proto::VolumeInfo* v = h.add_volumes();
          v->set_name(in.U8() % 4 ? "d" + std::to_string(i) : Name());
          v->set_block_size_bytes(in.U8() % 4 ? 4096u << (in.U8() % 9) : static_cast<std::uint32_t>(in.InterestingU64()));
          v->set_size_bytes(in.U8() % 4 ? 1 + in.U32() % (16ULL << 20) : in.InterestingU64());
        }
        return h.SerializeAsString();
      }
      case FrameType::kHelloReply: {
        proto::HelloReply r;
        r.set_protocol_version(in.U8() % 3);
        r.set_feature_flags(in.InterestingU64());
        std::size_t states = in.U8() % 4 ? s.volumes.size() : in.U8() % 5;
        for (std::size_t i = 0; i < states; ++i) {
          proto::ReplicaState* st = r.add_volumes();
          st->set_exists(in.Bool());
          st->set_size_bytes(in.InterestingU64());
          st->set_committed_epoch(in.InterestingU64());
          st->set_incomplete(in.Bool());
          st->set_staged_base_epoch(in.InterestingU64());
          std::uint64_t blocks = i < s.volumes.size() ? s.BlockCount(static_cast<std::uint32_t>(i)) : 0;
          st->set_staged_blocks(in.U8() % 2 ? blocks + in.U8() % 3 - 1 : in.InterestingU64());
        }
        return r.SerializeAsString();
      }
      case FrameType::kStagedHashes:
      case FrameType::kKeep: {
        std::uint32_t volume = Volume();
        std::uint64_t first = First(volume);
        std::uint32_t count = HashCount(Count(first, volume));
        if (type == FrameType::kKeep) {
          proto::Keep k;
          k.set_volume(volume);
          k.set_first_block(first);
          AddHashes(k, count);
          return k.SerializeAsString();
        }
        proto::StagedHashes h;
        h.set_volume(volume);
        h.set_first_block(first);
        AddHashes(h, count);
        return h.SerializeAsString();
      }
      case FrameType::kStagedEnd: {
        proto::StagedEnd e;
        e.set_total_blocks(in.InterestingU64());
        return e.SerializeAsString();
      }
      case FrameType::kCycleBegin: {
        proto::CycleBegin c;
        c.set_cycle_id(in.U8() % 8 ? 1 + in.U8() : in.InterestingU64());
        const auto mode = static_cast<proto::CycleMode>(in.U8() % 6);
        c.set_mode(mode);
        const bool compares = mode == proto::CYCLE_MODE_RESYNC || mode == proto::CYCLE_MODE_VERIFY;
        // A comparing cycle mostly gets a window in range, the others mostly none.
        switch (in.U8() % 8) {
          case 0: c.set_hash_window_blocks(static_cast<std::uint32_t>(in.InterestingU64())); break;
          case 1: c.set_hash_window_blocks(proto::kMaxHashWindowBlocks + in.U8() % 2); break;
          case 2: c.set_hash_window_blocks(in.U8() % 2); break;
          default: c.set_hash_window_blocks(compares ? 1 + in.U32() % proto::kMaxHashWindowBlocks : 0); break;
        }
        int entries = in.U8() % 4 ? static_cast<int>(s.volumes.size()) : in.U8() % 6;
        for (int i = 0; i < entries; ++i) {
          proto::VolumeCycle* v = c.add_volumes();
          v->set_volume(in.U8() % 4 ? static_cast<std::uint32_t>(i) : Volume());
          std::uint64_t epoch = in.U8() % 4 ? 1 + in.U8() : in.InterestingU64();
          if (mode == proto::CYCLE_MODE_VERIFY && in.U8() % 4 != 0) epoch = 0;
          v->set_epoch(epoch);
          switch (in.U8() % 8) {
            case 0: v->set_base_epoch(in.InterestingU64()); break;
            case 1: v->set_base_epoch(epoch + in.U8() % 2); break;  // at or after: a resync's right
            default: v->set_base_epoch(epoch > 0 ? epoch - 1 : 0); break;
          }
          v->set_block_count(in.U8() % 2 ? Blocks(v->volume()) - in.U8() % 2 + in.U8() % 2 : in.InterestingU64());
        }
        return c.SerializeAsString();
      }
      case FrameType::kBlocks: {
        proto::Blocks b;
        std::uint32_t volume = Volume();
        std::uint64_t first = First(volume);
        std::uint64_t count = Count(first, volume);
        b.set_volume(volume);
        b.set_first_block(first);
        b.set_block_count(static_cast<std::uint32_t>(count));
        std::uint64_t raw = in.U8();
        // Only a batch near the cap gets its real raw length: a payload of
        // megabytes for a frame rejected anyway would only cost time.
        if (volume < s.volumes.size() && first < s.BlockCount(volume) &&
            count <= 2 * proto::kMaxBatchBytes / s.volumes[volume].block_size_bytes()) {
          raw = proto::RawLength(s.volumes[volume], first, std::min(count, s.BlockCount(volume) - first));
        }
        switch (in.U8() % 6) {
          case 0: raw += 1; break;
          case 1: raw = raw > 0 ? raw - 1 : 0; break;
          case 2: raw = in.InterestingU64(); break;
          default: break;
        }
        b.set_raw_length(static_cast<std::uint32_t>(raw));
        std::uint8_t compression = in.U8() % 8;
        b.set_compression(compression < 5 ? proto::COMPRESSION_NONE
                          : compression < 7 ? proto::COMPRESSION_ZSTD
                                            : static_cast<proto::Compression>(in.U8()));
        // A raw length over the batch cap is rejected whatever the payload.
        std::size_t payload = b.raw_length() <= proto::kMaxBatchBytes ? b.raw_length() : in.U8();
        if (payload > (256U << 10) && in.U8() % 8 != 0) payload = in.U8();  // big payloads are slow: rarely
        switch (in.U8() % 6) {
          case 0: payload = payload / 2 + 1; break;  // "compressed"
          case 1: payload += 1; break;
          case 2: payload = 0; break;
          default: break;
        }
        b.mutable_payload()->assign(payload, '\0');
        AddHashes(b, HashCount(count));
        return b.SerializeAsString();
      }
      case FrameType::kZeroes: {
        proto::Zeroes z;
        std::uint32_t volume = Volume();
        std::uint64_t first = First(volume);
        z.set_volume(volume);
        z.set_first_block(first);
        z.set_block_count(Count(first, volume));
        return z.SerializeAsString();
      }
      case FrameType::kCycleEnd: {
        proto::CycleEnd e;
        e.set_cycle_id(in.U8() % 8 ? 1 + in.U8() : in.InterestingU64());
        int entries = in.U8() % 5;
        for (int i = 0; i < entries; ++i) {
          proto::VolumeCount* v = e.add_volumes();
          std::uint32_t volume = Volume();
          v->set_volume(volume);
          std::uint64_t blocks = Blocks(volume);
          v->set_data_blocks(in.U8() % 2 ? blocks - in.U8() % 2 + in.U8() % 2 : in.InterestingU64());
          v->set_zero_blocks(in.U8() % 2 ? in.U8() : in.InterestingU64());
          v->set_kept_blocks(in.U8() % 2 ? in.U8() : in.InterestingU64());
          v->set_matched_blocks(in.U8() % 2 ? blocks - in.U8() % 2 + in.U8() % 2 : in.InterestingU64());
        }
        return e.SerializeAsString();
      }
      case FrameType::kAck: {
        proto::Ack a;
        a.set_cycle_id(in.InterestingU64());
        std::size_t epochs = in.U8() % 4 ? s.volumes.size() : in.U8() % 6;
        for (std::size_t i = 0; i < epochs; ++i) a.add_committed_epochs(in.InterestingU64());
        a.set_bytes_received(in.InterestingU64());
        return a.SerializeAsString();
      }
      case FrameType::kReplicaHashes: {
        proto::ReplicaHashes r;
        std::uint32_t volume = Volume();
        std::uint64_t first = First(volume);
        r.set_volume(volume);
        r.set_first_block(first);
        // Whole hashes near the count wanted (or past the frame's cap), and
        // sometimes a ragged tail that is not a whole hash.
        std::uint64_t count = Count(first, volume);
        std::uint64_t hashes = std::min<std::uint64_t>(count, 4097);
        switch (in.U8() % 8) {
          case 0: hashes = 0; break;
          case 1: hashes += 1; break;
          case 2: hashes = proto::kMaxReplicaHashesPerFrame + (in.U8() & 1); break;
          default: break;
        }
        std::string bytes(hashes * proto::kReplicaHashBytes, '\0');
        for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 131 + 7);
        if (in.U8() % 8 == 0) bytes.append(1 + in.U8() % (proto::kReplicaHashBytes - 1), 'r');
        r.set_hashes(bytes);
        return r.SerializeAsString();
      }
      case FrameType::kHashCredit: {
        proto::HashCredit c;
        std::uint64_t total = 0;
        for (std::uint32_t i = 0; i < s.volumes.size(); ++i) total += s.BlockCount(i);
        switch (in.U8() % 4) {
          case 0: c.set_consumed_blocks(in.InterestingU64()); break;
          case 1: c.set_consumed_blocks(total + in.U8() % 2); break;  // the edge
          default: c.set_consumed_blocks(total > 0 ? in.U64() % total : 0); break;
        }
        return c.SerializeAsString();
      }
      case FrameType::kRemoveGuest: {
        proto::RemoveGuest r;
        r.set_job(in.U8() % 4 ? "100-0" : Name());
        return r.SerializeAsString();
      }
      case FrameType::kError: {
        proto::Error e;
        e.set_code(static_cast<std::uint32_t>(in.InterestingU64()));
        std::string text = Ascii(in.String(256));
        if (in.U8() % 4 == 0) text.append(in.U16() % (2 * proto::kMaxMessageBytes), '\n');
        e.set_message(text);
        return e.SerializeAsString();
      }
    }
    return {};
  }
};

struct Planned {
  FrameType type;
  std::vector<std::byte> body;
  bool header_ok;      // framed as the writer does
  std::size_t cut_at;  // bytes of this frame on the wire (cut the stream here), or SIZE_MAX
};

void Structured(InputReader& in, const proto::SessionContext& start) {
  Builder build{in, start};
  std::vector<Planned> plan;
  std::vector<std::byte> wire;
  std::uint32_t sequence = 0;
  for (int i = 0; i < 16 && !in.empty(); ++i) {
    std::uint8_t pick = in.U8();
    FrameType type = static_cast<FrameType>(1 + pick % proto::kMaxFrameType);
    std::string body_text;
    if (in.U8() % 8 == 0) {
      body_text = in.String(512);  // arbitrary protobuf bytes
    } else {
      body_text = build.Body(type);
    }
    std::vector<std::byte> body(body_text.size());
    if (!body.empty()) std::memcpy(body.data(), body_text.data(), body.size());
    // Field mutations through the serialized form; the checksum is computed after.
    std::uint8_t mutation = in.U8();
    if (mutation % 8 == 1 && !body.empty()) body[in.U32() % body.size()] ^= static_cast<std::byte>(1u << (in.U8() % 8));
    if (mutation % 8 == 2) body.resize(body.empty() ? 0 : in.U32() % body.size());
    if (mutation % 8 == 3) {
      std::span<const std::byte> extra = in.Bytes(in.U8() % 16);
      body.insert(body.end(), extra.begin(), extra.end());
    }
    if (body.size() > proto::MaxBodyBytes(type)) body.resize(proto::MaxBodyBytes(type));

    std::vector<std::byte> header(proto::kFrameHeaderBytes);
    bool header_ok = true;
    std::uint32_t seq = sequence;
    if (mutation / 8 % 8 == 1) {
      seq = sequence + 1 + in.U8();
      header_ok = false;
    }
    proto::EncodeHeader(type, seq, body, header.data());
    if (mutation / 8 % 8 == 2) {
      header[in.U8() % proto::kFrameHeaderBytes] ^= static_cast<std::byte>(1u << (in.U8() % 8));
      header_ok = false;
    }
    std::size_t frame_bytes = header.size() + body.size();
    std::size_t cut_at = SIZE_MAX;
    if (mutation / 64 == 1) cut_at = in.U32() % frame_bytes;
    wire.insert(wire.end(), header.begin(), header.end());
    wire.insert(wire.end(), body.begin(), body.end());
    plan.push_back({type, std::move(body), header_ok, cut_at});
    if (cut_at != SIZE_MAX) {
      wire.resize(wire.size() - frame_bytes + cut_at);
      break;
    }
    ++sequence;
    if (!header_ok) break;  // nothing after a bad header is read
  }

  // The reader returns exactly the well-framed frames before the first bad one.
  InputStream stream(wire);
  proto::FrameReader reader(stream);
  proto::SessionContext session = start;
  bool stopped = false;
  for (const Planned& p : plan) {
    core::Result<proto::RawFrame> f = reader.Next();
    if (p.cut_at != SIZE_MAX) {
      BLKREP_FUZZ_CHECK(!f.ok(), "a frame cut off was returned");
      BLKREP_FUZZ_CHECK(f.status().code() == (p.cut_at == 0 ? Code::kEndOfData : Code::kAborted) ||
                            (!p.header_ok && f.status().code() == Code::kCorruption),
                        "a cut stream gave " + f.status().ToString());
      stopped = true;
      break;
    }
    if (!p.header_ok) {
      BLKREP_FUZZ_CHECK(!f.ok() && (f.status().code() == Code::kCorruption || f.status().code() == Code::kAborted),
                        "a corrupted header was not detected: " + f.status().ToString());
      stopped = true;
      break;
    }
    BLKREP_FUZZ_CHECK(f.ok(), "a well-framed frame was rejected: " + f.status().ToString());
    BLKREP_FUZZ_CHECK(f->type == p.type && f->body.size() == p.body.size() &&
                          (p.body.empty() || std::memcmp(f->body.data(), p.body.data(), p.body.size()) == 0),
                      "a frame came back different");
    DecodeAndCheck(*f, session);
  }
  if (!stopped) {
    BLKREP_FUZZ_CHECK(reader.Next().status().code() == Code::kEndOfData, "a clean stream did not end with kEndOfData");
  }
  ReadAll(wire, start);
}

// The mode byte and a session recipe (SessionFrom): two volumes, 64 KiB
// blocks and 1 MiB + 5 bytes; 4 KiB blocks and 256 whole blocks.
std::vector<std::uint8_t> Prefix(std::uint8_t mode) {
  return {mode, 0x01, 0x04, 0x01, 0x04, 0x00, 0x10, 0x00, 0x00, 0x02, 0xFF};
}

std::vector<std::uint8_t> Seed(std::uint8_t mode, const std::vector<std::pair<FrameType, const google::protobuf::MessageLite*>>& frames) {
  std::vector<std::uint8_t> seed = Prefix(mode);
  struct Sink final : proto::Stream {
    std::vector<std::byte> bytes;
    core::Status ReadFull(std::span<std::byte>) override { return core::Status::EndOfData("write-only"); }
    core::Status WriteAll(std::span<const std::byte> d) override {
      bytes.insert(bytes.end(), d.begin(), d.end());
      return core::Status::Ok();
    }
  } sink;
  proto::FrameWriter writer(sink);
  for (auto [type, m] : frames) (void)writer.Send(type, *m);
  std::vector<std::uint8_t> wire = ToU8(sink.bytes);
  seed.insert(seed.end(), wire.begin(), wire.end());
  return seed;
}

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  // Raw mode: a whole valid session as the receiver reads it.
  proto::Hello hello;
  hello.set_protocol_version(1);
  hello.set_min_protocol_version(1);
  hello.set_guest("100");
  hello.set_job("100-0");
  proto::VolumeInfo* v = hello.add_volumes();
  v->set_name("disk0");
  v->set_size_bytes(3 * 4096 + 100);
  v->set_block_size_bytes(4096);
  proto::CycleBegin begin;
  begin.set_cycle_id(1);
  begin.set_mode(proto::CYCLE_MODE_FULL);
  proto::VolumeCycle* vc = begin.add_volumes();
  vc->set_epoch(1);
  vc->set_block_count(4);
  proto::Blocks blocks;
  blocks.set_first_block(3);
  blocks.set_block_count(1);
  blocks.set_raw_length(100);
  blocks.set_payload(std::string(100, 'x'));
  blocks.add_hashes(42);
  proto::Zeroes zeroes;
  zeroes.set_first_block(1);
  zeroes.set_block_count(2);
  proto::Keep keep;
  keep.add_hashes(7);
  proto::CycleEnd end;
  end.set_cycle_id(1);
  proto::VolumeCount* count = end.add_volumes();
  count->set_data_blocks(1);
  count->set_zero_blocks(2);
  count->set_kept_blocks(1);
  proto::Error error;
  error.set_code(4);
  error.set_message("bad\nthing");
  seeds.push_back(Seed(1, {{FrameType::kHello, &hello}, {FrameType::kCycleBegin, &begin},
                           {FrameType::kBlocks, &blocks}, {FrameType::kZeroes, &zeroes},
                           {FrameType::kKeep, &keep}, {FrameType::kCycleEnd, &end},
                           {FrameType::kError, &error}}));
  seeds.push_back(Seed(3, {{FrameType::kZeroes, &zeroes}, {FrameType::kHello, &hello}}));  // before HELLO
  // Raw mode: a verify, both directions' frames in one stream (the gate
  // does not care who sent them): CYCLE_BEGIN with a window, the replica's
  // hashes, a credit, CYCLE_END with every block matched.
  proto::CycleBegin verify;
  verify.set_cycle_id(2);
  verify.set_mode(proto::CYCLE_MODE_VERIFY);
  verify.set_hash_window_blocks(2);
  proto::VolumeCycle* vv = verify.add_volumes();
  vv->set_block_count(4);
  proto::ReplicaHashes hashes;
  hashes.set_hashes(std::string(2 * proto::kReplicaHashBytes, 'h'));
  proto::HashCredit credit;
  credit.set_consumed_blocks(2);
  proto::ReplicaHashes more;
  more.set_first_block(2);
  more.set_hashes(std::string(2 * proto::kReplicaHashBytes, 'i'));
  proto::CycleEnd verified;
  verified.set_cycle_id(2);
  verified.add_volumes()->set_matched_blocks(4);
  seeds.push_back(Seed(1, {{FrameType::kHello, &hello}, {FrameType::kCycleBegin, &verify},
                           {FrameType::kReplicaHashes, &hashes}, {FrameType::kHashCredit, &credit},
                           {FrameType::kReplicaHashes, &more}, {FrameType::kCycleEnd, &verified}}));
  // `blkrep delete`: the handshake, then REMOVE_GUEST in place of a cycle.
  proto::RemoveGuest remove;
  remove.set_job("100-0");
  seeds.push_back(Seed(1, {{FrameType::kHello, &hello}, {FrameType::kRemoveGuest, &remove}}));
  // Structured mode: one of each frame type, no mutation, then a few with mutations.
  std::vector<std::uint8_t> structured = Prefix(0);
  for (std::uint8_t t = 0; t < proto::kMaxFrameType; ++t) {
    structured.insert(structured.end(), {t, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  }
  seeds.push_back(structured);
  for (std::uint8_t mutation : {1, 2, 3, 8, 16, 64}) {
    std::vector<std::uint8_t> s = Prefix(0);
    s.insert(s.end(), {5, 1, 1, 2, 0, 4, 0, 0, 0, mutation, 3, 9, 7, 1, 0, 0});
    seeds.push_back(s);
  }
  seeds.push_back({});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  // Protobuf logs every string field that is not UTF-8; raw inputs hold many.
  static const bool kQuiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)kQuiet;
  InputReader in(data, size);
  std::uint8_t mode = in.U8();
  blkrep::proto::SessionContext session = SessionFrom(in);
  if (mode & 2) session.volumes.clear();  // as before the session's HELLO
  if (mode & 1) {
    ReadAll(in.Bytes(in.remaining()), session);
  } else {
    Structured(in, session);
  }
  return 0;
}
