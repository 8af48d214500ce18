// Fuzz target for the receiver's guest state file gate (receiver/
// guest_state.h, docs/replica-format.md "The guest state file"):
// DecodeGuestState, and ReadGuestStateFile over an in-memory file system.
//
// Input: u8 mode, then either
//   raw:        the rest is the state file as found on disk, or
//   structured: a recipe for a GuestState that the receiver could have
//               written (a cycle or none, apply pending or not, 0-4 volumes
//               with geometries inside the wire's caps and consistent
//               staging, cycle and count fields, replica identities of each
//               kind), then up to 3 field mutations (a field set to an edge
//               value: 0, 1, 2, caps and one past them, all ones), encoded
//               as version 2 or (sometimes) version 1, then optionally the
//               bytes mutated (a byte set, a bit flipped, cut, bytes
//               appended) and the checksum recomputed (mostly), so the
//               fuzzer reaches the field checks behind the checksum.
// Invariants:
//   - DecodeGuestState fails only with kCorruption, one line, starting
//     "guest state file: "; ReadGuestStateFile gives the same verdict;
//   - what it accepts keeps the gate's promises, re-checked here
//     independently: names, geometry inside the wire's caps, bools, mode,
//     staging ids, cycle and count fields, replica identities; so nothing
//     sized from it (a bitmap of the staging's blocks) exceeds 2^48 blocks;
//   - it accepts exactly the canonical encodings: re-encoding what it
//     returns gives the input bytes back (as version 1 for a version 1
//     input, whose replica identities are all unknown);
//   - a structured state without byte mutations is accepted exactly when
//     ValidateGuestState accepts it, and comes back equal (without its
//     replica identities, when encoded as version 1).
#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/memory_file_system.h"
#include "proto/frame.h"
#include "receiver/guest_state.h"
#include "tests/fuzz/fuzz_util.h"

namespace blkrep::fuzz {
namespace {

using core::Code;
using receiver::GuestState;
using receiver::ReplicaIdentity;
using receiver::ReplicaKind;
using receiver::VolumeState;

constexpr std::uint64_t kMaxVolumeBytes = std::uint64_t{1} << 60;
constexpr std::uint32_t kMinBlockBytes = 4096;
constexpr std::uint32_t kMaxBlockBytes = 1U << 20;

// ---- independent re-statement of what an accepted state promises ----

bool NameRule(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

bool GeometryRule(std::uint64_t size, std::uint32_t bs) {
  if (size == 0 && bs == 0) return true;
  bool pow2 = bs != 0 && (bs & (bs - 1)) == 0;
  return pow2 && bs >= kMinBlockBytes && bs <= kMaxBlockBytes && size >= 1 && size <= kMaxVolumeBytes;
}

void CheckAccepted(const GuestState& s) {
  BLKREP_FUZZ_CHECK(s.job.empty() || NameRule(s.job), "accepted a bad job name");
  BLKREP_FUZZ_CHECK(s.next_staging_id >= 1, "accepted next_staging_id 0");
  BLKREP_FUZZ_CHECK(s.mode <= 3, "accepted an unknown mode");
  BLKREP_FUZZ_CHECK((s.cycle_id == 0) == (s.mode == 0), "accepted a cycle id without a mode or the reverse");
  BLKREP_FUZZ_CHECK(!s.apply_pending || s.cycle_id != 0, "accepted apply_pending without a cycle");
  BLKREP_FUZZ_CHECK(s.volumes.size() <= 4096, "accepted too many volumes");
  std::set<std::string> names;
  for (const VolumeState& v : s.volumes) {
    BLKREP_FUZZ_CHECK(NameRule(v.name), "accepted a bad volume name");
    BLKREP_FUZZ_CHECK(names.insert(v.name).second, "accepted a volume name twice");
    BLKREP_FUZZ_CHECK(GeometryRule(v.size_bytes, v.block_size_bytes), "accepted a bad volume geometry");
    const receiver::StagingInfo& st = v.staging;
    BLKREP_FUZZ_CHECK(GeometryRule(st.volume_size_bytes, st.block_size_bytes), "accepted a bad staging geometry");
    if (st.staging_id != 0) {
      BLKREP_FUZZ_CHECK(st.block_size_bytes != 0, "accepted a staging without geometry");
      BLKREP_FUZZ_CHECK(st.staging_id < s.next_staging_id, "accepted a staging id never allocated");
      // What ApplyVolume / LoadStaging may size by it.
      std::uint64_t blocks = (st.volume_size_bytes + st.block_size_bytes - 1) / st.block_size_bytes;
      BLKREP_FUZZ_CHECK(blocks <= (std::uint64_t{1} << 48), "accepted a staging of more than 2^48 blocks");
    }
    if (v.in_cycle) {
      // A resync (3) may be staged or in place, and its base is the
      // replica's epoch, whatever the cycle's.
      const bool resync = s.mode == 3;
      BLKREP_FUZZ_CHECK(s.cycle_id != 0 && st.staging_id != 0, "accepted in_cycle without a cycle or a staging");
      BLKREP_FUZZ_CHECK(v.cycle_epoch >= 1 && (resync || st.base_epoch < v.cycle_epoch), "accepted bad cycle epochs");
      std::uint64_t blocks = (st.volume_size_bytes + st.block_size_bytes - 1) / st.block_size_bytes;
      BLKREP_FUZZ_CHECK(v.cycle_block_count <= blocks, "accepted a cycle of more blocks than the volume has");
      BLKREP_FUZZ_CHECK(resync || st.in_place == (s.mode != 2), "accepted staging_in_place against the mode");
      BLKREP_FUZZ_CHECK(!st.in_place || v.incomplete, "accepted an in-place cycle on a complete replica");
    }
    if (s.apply_pending && v.in_cycle) {
      BLKREP_FUZZ_CHECK(st.volume_size_bytes == v.size_bytes && st.block_size_bytes == v.block_size_bytes,
                        "accepted a validated cycle whose staging geometry differs from the volume's");
      unsigned __int128 sum = static_cast<unsigned __int128>(v.data_blocks) + v.zero_blocks + v.kept_blocks;
      if (s.mode == 3) {
        BLKREP_FUZZ_CHECK(sum <= v.cycle_block_count, "accepted resync counts beyond the cycle");
      } else {
        BLKREP_FUZZ_CHECK(sum == v.cycle_block_count, "accepted counts that do not add up to the cycle");
      }
    } else {
      BLKREP_FUZZ_CHECK(v.data_blocks == 0 && v.zero_blocks == 0 && v.kept_blocks == 0,
                        "accepted counts outside an apply-pending cycle");
    }
    const ReplicaIdentity& id = v.replica;
    switch (static_cast<std::uint8_t>(id.kind)) {
      case 0:
        BLKREP_FUZZ_CHECK(id.dev == 0 && id.ino == 0 && id.mtime_ns == 0, "accepted an unknown replica with fields");
        break;
      case 1: break;
      case 2:
        BLKREP_FUZZ_CHECK(id.ino == 0 && id.mtime_ns == 0, "accepted a block device replica with inode or mtime");
        break;
      default: BLKREP_FUZZ_CHECK(false, "accepted an unknown replica_kind");
    }
  }
}

// The version 1 encoding of `s` (docs/replica-format.md, "Versions"): the
// version 2 one without the last 25 bytes of each volume entry.
std::vector<std::byte> EncodeVersion1(const GuestState& s) {
  std::vector<std::byte> v2 = receiver::EncodeGuestState(s);
  std::vector<std::byte> out;
  auto copy = [&](std::size_t from, std::size_t n) { out.insert(out.end(), v2.begin() + from, v2.begin() + from + n); };
  auto le16 = [&](std::size_t at) {
    return static_cast<std::size_t>(v2[at]) | static_cast<std::size_t>(v2[at + 1]) << 8;
  };
  const std::size_t head = 8 + 2 + le16(8) + 8 + 4 + 8 + 1 + 1 + 4;
  copy(0, head);
  std::size_t at = head;
  for (std::size_t i = 0; i < s.volumes.size(); ++i) {
    std::size_t entry = 2 + le16(at) + 91;
    copy(at, entry);
    at += entry + 25;
  }
  core::StoreLe32(out.data() + 4, 1);
  std::uint64_t sum = core::Xxh3_64(out);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>(sum >> (8 * i)));
  return out;
}

GuestState WithoutReplicaIdentities(GuestState s) {
  for (VolumeState& v : s.volumes) v.replica = ReplicaIdentity{};
  return s;
}

bool SameState(const GuestState& a, const GuestState& b) {
  return receiver::EncodeGuestState(a) == receiver::EncodeGuestState(b);
}

// Decodes `bytes` both ways and checks the verdict. Returns whether accepted.
bool DecodeAndCheck(std::span<const std::byte> bytes) {
  core::Result<GuestState> s = receiver::DecodeGuestState(bytes);
  // The same bytes as a file.
  core::MemoryFileSystem fs;
  fs.SetContents("/g/state", std::vector<std::byte>(bytes.begin(), bytes.end()));
  core::Result<GuestState> f = receiver::ReadGuestStateFile(fs, "/g");
  BLKREP_FUZZ_CHECK(f.ok() == s.ok(), "ReadGuestStateFile and DecodeGuestState disagree");
  if (!s.ok()) {
    const std::string& m = s.status().message();
    BLKREP_FUZZ_CHECK(s.status().code() == Code::kCorruption,
                      "DecodeGuestState failed with a code other than kCorruption: " + s.status().ToString());
    BLKREP_FUZZ_CHECK(m.rfind("guest state file: ", 0) == 0, "error does not say what it is about: " + m);
    BLKREP_FUZZ_CHECK(m.find('\n') == std::string::npos, "error is not one line");
    BLKREP_FUZZ_CHECK(f.status().code() == Code::kCorruption && f.status().message() == "/g/state: " + m,
                      "ReadGuestStateFile gave another error: " + f.status().ToString());
    return false;
  }
  CheckAccepted(*s);
  BLKREP_FUZZ_CHECK(receiver::ValidateGuestState(*s).ok(), "decoded a state ValidateGuestState refuses");
  const std::uint32_t version = core::LoadLe32(bytes.data() + 4);
  BLKREP_FUZZ_CHECK(version == 1 || version == 2, "accepted version " + std::to_string(version));
  if (version == 1) {
    for (const VolumeState& v : s->volumes) {
      BLKREP_FUZZ_CHECK(!v.replica.known(), "a version 1 file gave a replica identity");
    }
  }
  std::vector<std::byte> again = version == 1 ? EncodeVersion1(*s) : receiver::EncodeGuestState(*s);
  BLKREP_FUZZ_CHECK(again.size() == bytes.size() && std::equal(again.begin(), again.end(), bytes.begin()),
                    "accepted a non-canonical encoding");
  BLKREP_FUZZ_CHECK(SameState(*f, *s), "ReadGuestStateFile returned another state");
  return true;
}

// ---- structured states ----

std::string PickName(InputReader& in, int index) {
  switch (in.U8() % 16) {
    case 0: return "";
    case 1: return ".hidden";
    case 2: return "-x";
    case 3: return "a/b";
    case 4: return "..";
    case 5: return std::string(64, 'n');
    case 6: return std::string(65, 'n');
    case 7: return in.String(70);
    case 8: return "disk0";  // often a duplicate
    default: return "disk" + std::to_string(index);
  }
}

struct Geometry {
  std::uint64_t size = 0;
  std::uint32_t bs = 0;
};

Geometry PickGeometry(InputReader& in) {
  Geometry g;
  g.bs = kMinBlockBytes << (in.U8() % 9);
  switch (in.U8() % 4) {
    case 0: g.size = 1 + in.U16(); break;
    case 1: g.size = g.bs * (1 + std::uint64_t{in.U8()}); break;
    case 2: g.size = kMaxVolumeBytes - in.U8() % 2; break;
    default: g.size = 1 + in.InterestingU64() % kMaxVolumeBytes; break;
  }
  return g;
}

std::uint64_t BlocksOf(const Geometry& g) { return (g.size + g.bs - 1) / g.bs; }

// A replica identity the receiver could have recorded.
ReplicaIdentity PlausibleIdentity(InputReader& in) {
  ReplicaIdentity id;
  switch (in.U8() % 3) {
    case 1:
      id.kind = ReplicaKind::kRegularFile;
      id.dev = in.InterestingU64();
      id.ino = in.InterestingU64();
      id.mtime_ns = in.U64();
      break;
    case 2:
      id.kind = ReplicaKind::kBlockDevice;
      id.dev = in.InterestingU64();
      break;
    default: break;
  }
  return id;
}

// A state the receiver could have written.
GuestState Plausible(InputReader& in) {
  GuestState s;
  s.job = in.U8() % 4 == 0 ? "" : "vm100-" + std::to_string(in.U8());
  s.next_staging_id = 1 + in.U8();
  s.attempt = in.U8();
  bool cycle = in.Bool();
  if (cycle) {
    s.cycle_id = 1 + in.U8();
    s.mode = static_cast<std::uint8_t>(1 + in.U8() % 3);
    s.apply_pending = in.Bool();
  }
  int count = in.U8() % 5;
  for (int i = 0; i < count; ++i) {
    VolumeState v;
    v.name = "disk" + std::to_string(i);
    Geometry g = PickGeometry(in);
    if (in.U8() % 8 == 7) g = Geometry{};  // a volume whose geometry was never set
    v.size_bytes = g.size;
    v.block_size_bytes = g.bs;
    v.committed_epoch = in.U8();
    v.incomplete = in.Bool();
    v.in_cycle = cycle && in.Bool();
    bool staged = v.in_cycle || (in.U8() % 4 == 0 && s.next_staging_id > 1);
    if (staged) {
      // A validated cycle's staging has the volume's geometry; otherwise
      // the volume may have changed since (or never had one recorded).
      Geometry sg = g.bs != 0 && in.Bool() ? g : PickGeometry(in);
      if (v.in_cycle && s.apply_pending) {
        v.size_bytes = sg.size;
        v.block_size_bytes = sg.bs;
      }
      v.staging.staging_id = 1 + in.U64() % (s.next_staging_id - 1 + (s.next_staging_id == 1 ? 1 : 0));
      if (v.staging.staging_id >= s.next_staging_id) s.next_staging_id = v.staging.staging_id + 1;
      v.staging.in_place = v.in_cycle ? s.mode != 2 : in.Bool();
      v.staging.volume_size_bytes = sg.size;
      v.staging.block_size_bytes = sg.bs;
      v.staging.base_epoch = in.U8();
      if (v.in_cycle) {
        if (v.staging.in_place) v.incomplete = true;
        v.cycle_epoch = v.staging.base_epoch + 1 + in.U8();
        std::uint64_t blocks = BlocksOf(sg);
        v.cycle_block_count = in.Bool() ? blocks : in.U64() % (blocks + 1);
        if (s.apply_pending) {
          std::uint64_t n = v.cycle_block_count;
          v.data_blocks = in.U64() % (n + 1);
          v.zero_blocks = in.U64() % (n - v.data_blocks + 1);
          v.kept_blocks = n - v.data_blocks - v.zero_blocks;
        }
      }
    } else if (in.U8() % 4 == 0) {
      Geometry sg = PickGeometry(in);  // stale geometry of a dropped staging
      v.staging.volume_size_bytes = sg.size;
      v.staging.block_size_bytes = sg.bs;
    }
    if (v.in_cycle == false && in.U8() % 4 == 0) {
      v.cycle_epoch = in.U8();  // stale cycle fields
      v.cycle_block_count = in.U8();
    }
    v.replica = PlausibleIdentity(in);
    s.volumes.push_back(std::move(v));
  }
  return s;
}

// Sets one field to an edge value (it may stay valid).
void MutateField(InputReader& in, GuestState& s) {
  std::uint64_t x = in.InterestingU64();
  std::uint8_t field = in.U8() % 30;
  if (field < 7 || s.volumes.empty()) {
    switch (field % 7) {
      case 0: s.job = PickName(in, 0); break;
      case 1: s.next_staging_id = x; break;
      case 2: s.attempt = static_cast<std::uint32_t>(x); break;
      case 3: s.cycle_id = x; break;
      case 4: s.mode = static_cast<std::uint8_t>(x); break;
      case 5: s.apply_pending = !s.apply_pending; break;
      default: if (!s.volumes.empty()) s.volumes.pop_back(); break;
    }
    return;
  }
  VolumeState& v = s.volumes[in.U8() % s.volumes.size()];
  switch (field - 7) {
    case 0: v.name = PickName(in, static_cast<int>(in.U8())); break;
    case 1: v.size_bytes = x; break;
    case 2: v.block_size_bytes = static_cast<std::uint32_t>(x); break;
    case 3: v.committed_epoch = x; break;
    case 4: v.incomplete = !v.incomplete; break;
    case 5: v.staging.staging_id = x; break;
    case 6: v.staging.in_place = !v.staging.in_place; break;
    case 7: v.staging.base_epoch = x; break;
    case 8: v.staging.volume_size_bytes = x; break;
    case 9: v.staging.block_size_bytes = static_cast<std::uint32_t>(x); break;
    case 10: v.in_cycle = !v.in_cycle; break;
    case 11: v.cycle_epoch = x; break;
    case 12: v.cycle_block_count = x; break;
    case 13: v.data_blocks = x; break;
    case 14: v.zero_blocks = x; break;
    case 15: v.kept_blocks = x; break;
    case 16: v.block_size_bytes = kMinBlockBytes << (in.U8() % 10); break;  // one step past the cap too
    case 17: v.staging.volume_size_bytes = kMaxVolumeBytes + in.U8() % 2; break;
    case 18: v.replica.kind = static_cast<ReplicaKind>(x); break;
    case 19: v.replica.dev = x; break;
    case 20: v.replica.ino = x; break;
    case 21: v.replica.mtime_ns = x; break;
    default: s.volumes.push_back(s.volumes.front()); break;  // a duplicate name
  }
}

void FixChecksum(std::vector<std::byte>& bytes) {
  if (bytes.size() < 8) return;
  std::uint64_t sum = core::Xxh3_64(std::span(bytes).first(bytes.size() - 8));
  for (int i = 0; i < 8; ++i) bytes[bytes.size() - 8 + i] = static_cast<std::byte>(sum >> (8 * i));
}

void Structured(InputReader& in) {
  GuestState s = Plausible(in);
  int mutations = in.U8() % 4;
  for (int i = 0; i < mutations; ++i) MutateField(in, s);
  // Sometimes as a version 1 file, which has no replica identities.
  const bool version1 = in.U8() % 8 == 1;
  if (version1) s = WithoutReplicaIdentities(std::move(s));
  std::vector<std::byte> bytes = version1 ? EncodeVersion1(s) : receiver::EncodeGuestState(s);
  std::uint8_t how = in.U8();
  bool byte_mutated = false;
  switch (how % 8) {
    case 1:  // a byte set: lengths, bools, any field
      bytes[in.U32() % bytes.size()] = static_cast<std::byte>(in.U8());
      byte_mutated = true;
      break;
    case 2:
      bytes[in.U32() % bytes.size()] ^= static_cast<std::byte>(1U << (in.U8() % 8));
      byte_mutated = true;
      break;
    case 3:
      bytes.resize(in.U32() % bytes.size());
      byte_mutated = true;
      break;
    case 4: {
      std::span<const std::byte> extra = in.Bytes(in.U8() % 16);
      bytes.insert(bytes.end() - std::min<std::size_t>(8, bytes.size()), extra.begin(), extra.end());
      byte_mutated = true;
      break;
    }
    default: break;
  }
  if (how / 8 % 8 != 7) FixChecksum(bytes);  // rarely, leave it wrong
  bool accepted = DecodeAndCheck(bytes);
  if (!byte_mutated && how / 8 % 8 != 7) {
    core::Status valid = receiver::ValidateGuestState(s);
    BLKREP_FUZZ_CHECK(accepted == valid.ok(), "DecodeGuestState and ValidateGuestState disagree on an encoding: " +
                                                  valid.ToString());
    if (accepted) BLKREP_FUZZ_CHECK(SameState(*receiver::DecodeGuestState(bytes), s), "a state came back different");
  }
}

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  // Raw: the worked example of docs/replica-format.md (apply pending).
  GuestState s;
  s.job = "vm100-0";
  s.next_staging_id = 3;
  s.attempt = 2;
  s.cycle_id = 2;
  s.mode = 2;
  s.apply_pending = true;
  VolumeState v;
  v.name = "disk0";
  v.size_bytes = 1 << 20;
  v.block_size_bytes = 4096;
  v.committed_epoch = 1;
  v.staging = {2, false, 1, 1 << 20, 4096};
  v.in_cycle = true;
  v.cycle_epoch = 2;
  v.cycle_block_count = 12;
  v.data_blocks = 2;
  v.zero_blocks = 10;
  v.replica = {ReplicaKind::kRegularFile, 0xfd01, 0xc0013, 0x17d78fe5d37acd15};
  s.volumes.push_back(v);
  std::vector<std::uint8_t> raw = {1};
  std::vector<std::uint8_t> example = ToU8(receiver::EncodeGuestState(s));
  raw.insert(raw.end(), example.begin(), example.end());
  seeds.push_back(raw);
  // The same as version 1 wrote it.
  raw = {1};
  example = ToU8(EncodeVersion1(s));
  raw.insert(raw.end(), example.begin(), example.end());
  seeds.push_back(raw);
  // Structured: a few recipes, with and without mutations.
  seeds.push_back({0, 0, 1, 0, 1, 1, 1, 0, 2, 0, 0, 1, 0, 0, 0, 0, 1});
  seeds.push_back({0, 1, 5, 3, 1, 7, 2, 1, 3, 0, 1, 2, 0, 0, 1, 1, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1});
  seeds.push_back({0, 1, 5, 3, 1, 7, 1, 0, 2, 1, 1, 0, 0, 0, 1, 1, 2, 9, 20, 0, 0, 9});
  seeds.push_back({0, 2, 9, 9, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 10, 8, 1, 2});
  seeds.push_back({1});
  seeds.push_back({});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  InputReader in(data, size);
  std::uint8_t mode = in.U8();
  if (mode & 1) {
    DecodeAndCheck(in.Bytes(in.remaining()));
  } else {
    Structured(in);
  }
  return 0;
}
