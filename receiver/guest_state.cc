#include "receiver/guest_state.h"

#include <sys/stat.h>

#include <set>
#include <string_view>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/names.h"
#include "proto/frame.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;

namespace {

constexpr std::uint32_t kStateMagic = 0x47524B42;  // "BKRG"
// The version written; version 1 (no replica identities) is still read.
constexpr std::uint32_t kStateVersion = 2;
constexpr std::uint32_t kStateVersion1 = 1;
constexpr std::size_t kMaxNameBytes = core::kMaxNameBytes;
constexpr std::uint32_t kMaxVolumes = 4096;
constexpr std::uint8_t kMaxMode = proto::CYCLE_MODE_RESYNC;
constexpr std::uint8_t kMaxReplicaKind = static_cast<std::uint8_t>(ReplicaKind::kBlockDevice);

// Bytes of a volume entry after its name (docs/replica-format.md: 91 in
// version 1, 116 in version 2).
constexpr std::uint64_t kVolumeFieldBytesV1 = 91;
constexpr std::uint64_t kVolumeFieldBytes = kVolumeFieldBytesV1 + 25;

// The largest encoding there can be (docs/replica-format.md: a head of 36 +
// j bytes, 116 + 2 + n per volume, the checksum), so a state file is never
// read into memory by a size it claims.
constexpr std::uint64_t kMaxHeadBytes = 36 + kMaxNameBytes;
constexpr std::uint64_t kMaxVolumeEntryBytes = kVolumeFieldBytes + 2 + kMaxNameBytes;
constexpr std::uint64_t kMaxStateFileBytes = kMaxHeadBytes + kMaxVolumes * kMaxVolumeEntryBytes + 8;

Status Bad(std::string_view what) { return Status::Corruption("guest state file: " + std::string(what)); }

// Reads the fields of a state file in order. The first field that is
// missing or malformed (a length over its cap, a bool other than 0 or 1)
// latches an error naming it; later reads return zeroes.
class FieldReader {
 public:
  explicit FieldReader(std::span<const std::byte> body) : r_(body) {}

  // Prefix of the field names in errors ("volume 3"); empty for the head.
  void set_where(std::string where) { where_ = std::move(where); }
  const Status& status() const { return status_; }
  std::size_t remaining() const { return r_.remaining(); }

  std::uint8_t U8(const char* field) { return Checked(field, r_.U8()); }
  std::uint32_t U32(const char* field) { return Checked(field, r_.U32()); }
  std::uint64_t U64(const char* field) { return Checked(field, r_.U64()); }
  bool Bool(const char* field) {
    std::uint8_t v = U8(field);
    if (v > 1) Fail(field, std::to_string(v) + " is not a bool (0 or 1)");
    return v == 1;
  }
  // A str16 of at most kMaxNameBytes bytes (its characters are checked by
  // ValidateGuestState).
  std::string Name(const char* field) {
    std::uint16_t length = U16(field);
    if (length > kMaxNameBytes) {
      Fail(field, "is " + std::to_string(length) + " bytes long, more than " + std::to_string(kMaxNameBytes));
      return {};
    }
    std::span<const std::byte> bytes = r_.Bytes(length);
    Checked(field, 0);
    return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }

 private:
  std::uint16_t U16(const char* field) { return Checked(field, r_.U16()); }
  template <typename T>
  T Checked(const char* field, T value) {
    if (status_.ok() && !r_.ok()) Fail(field, "is missing (the file is truncated)");
    return status_.ok() ? value : T{0};
  }
  void Fail(const char* field, const std::string& what) {
    if (!status_.ok()) return;
    status_ = Bad((where_.empty() ? "" : where_ + ": ") + field + " " + what);
    r_.Fail();
  }

  core::ByteReader r_;
  std::string where_;
  Status status_;
};

// A volume's or a staging's geometry: none (both 0), or a block size that is
// a power of two inside the wire's caps and a volume size of 1 byte to
// proto::kMaxVolumeSizeBytes, as a HELLO must give them.
bool ValidGeometry(std::uint64_t size_bytes, std::uint32_t block_size_bytes) {
  if (size_bytes == 0 && block_size_bytes == 0) return true;
  return block_size_bytes >= proto::kMinBlockSizeBytes && block_size_bytes <= proto::kMaxBlockSizeBytes &&
         (block_size_bytes & (block_size_bytes - 1)) == 0 && size_bytes >= 1 &&
         size_bytes <= proto::kMaxVolumeSizeBytes;
}

std::string GeometryError(const char* size_field, std::uint64_t size_bytes, const char* block_field,
                          std::uint32_t block_size_bytes) {
  return std::string(size_field) + " " + std::to_string(size_bytes) + " and " + block_field + " " +
         std::to_string(block_size_bytes) + " are no volume geometry (both 0, or a power-of-two block size in [" +
         std::to_string(proto::kMinBlockSizeBytes) + ", " + std::to_string(proto::kMaxBlockSizeBytes) +
         "] and a size in [1, " + std::to_string(proto::kMaxVolumeSizeBytes) + "])";
}

// REQUIRES: ValidGeometry(size_bytes, block_size_bytes) and block_size_bytes != 0.
std::uint64_t BlocksOf(std::uint64_t size_bytes, std::uint32_t block_size_bytes) {
  return size_bytes / block_size_bytes + (size_bytes % block_size_bytes != 0 ? 1 : 0);
}

Status CheckVolume(const GuestState& s, std::size_t index, const VolumeState& v) {
  std::string where = "volume " + std::to_string(index);
  if (core::IsValidName(v.name)) where += " (" + v.name + ")";
  auto bad = [&](const std::string& what) { return Bad(where + ": " + what); };
  if (!core::IsValidName(v.name)) {
    return bad("name is not a valid name (1-64 bytes of [A-Za-z0-9._-], not starting with '.' or '-')");
  }
  if (!ValidGeometry(v.size_bytes, v.block_size_bytes)) {
    return bad(GeometryError("size_bytes", v.size_bytes, "block_size_bytes", v.block_size_bytes));
  }
  const StagingInfo& st = v.staging;
  if (!ValidGeometry(st.volume_size_bytes, st.block_size_bytes)) {
    return bad(GeometryError("staging_volume_size_bytes", st.volume_size_bytes, "staging_block_size_bytes",
                             st.block_size_bytes));
  }
  if (st.staging_id != 0) {
    if (st.staging_id >= s.next_staging_id) {
      return bad("staging_id " + std::to_string(st.staging_id) + " was never allocated (next_staging_id " +
                 std::to_string(s.next_staging_id) + ")");
    }
    if (st.block_size_bytes == 0) {
      return bad("staging_block_size_bytes is 0 for staging " + std::to_string(st.staging_id));
    }
  }
  if (v.in_cycle) {
    if (s.cycle_id == 0) return bad("in_cycle is 1 without a cycle (cycle_id 0)");
    if (st.staging_id == 0) return bad("in_cycle is 1 without a staging (staging_id 0)");
    // A resync is staged, or in place where the replica held no complete
    // cycle; a full cycle always in place, an incremental never.
    if (s.mode != proto::CYCLE_MODE_RESYNC && st.in_place != (s.mode != proto::CYCLE_MODE_INCREMENTAL)) {
      return bad("staging_in_place " + std::to_string(st.in_place ? 1 : 0) + " contradicts mode " +
                 std::to_string(s.mode));
    }
    if (st.in_place && !v.incomplete) return bad("incomplete is 0 while a cycle writes the replica in place");
    if (v.cycle_epoch == 0) return bad("cycle_epoch is 0 in a cycle");
    // A resync's base is the replica's epoch, whatever the source's journal
    // numbers its cycles now.
    if (s.mode != proto::CYCLE_MODE_RESYNC && st.base_epoch >= v.cycle_epoch) {
      return bad("staging_base_epoch " + std::to_string(st.base_epoch) + " is not before cycle_epoch " +
                 std::to_string(v.cycle_epoch));
    }
    std::uint64_t blocks = BlocksOf(st.volume_size_bytes, st.block_size_bytes);
    if (v.cycle_block_count > blocks) {
      return bad("cycle_block_count " + std::to_string(v.cycle_block_count) + " exceeds the " +
                 std::to_string(blocks) + " blocks of the staging's volume");
    }
  }
  if (s.apply_pending && v.in_cycle) {
    // Written by CYCLE_END with the geometry of the HELLO the staging was made for.
    if (st.volume_size_bytes != v.size_bytes || st.block_size_bytes != v.block_size_bytes) {
      return bad("staging_volume_size_bytes " + std::to_string(st.volume_size_bytes) +
                 " and staging_block_size_bytes " + std::to_string(st.block_size_bytes) + " differ from size_bytes " +
                 std::to_string(v.size_bytes) + " and block_size_bytes " + std::to_string(v.block_size_bytes) +
                 " of a validated cycle");
    }
    // A resync brings only the blocks whose hashes differed.
    const std::uint64_t n = v.cycle_block_count;
    const bool exact = s.mode != proto::CYCLE_MODE_RESYNC;
    if (v.data_blocks > n || v.zero_blocks > n - v.data_blocks || v.kept_blocks > n - v.data_blocks - v.zero_blocks ||
        (exact && v.kept_blocks != n - v.data_blocks - v.zero_blocks)) {
      return bad("data_blocks " + std::to_string(v.data_blocks) + ", zero_blocks " + std::to_string(v.zero_blocks) +
                 " and kept_blocks " + std::to_string(v.kept_blocks) + " do not add up to cycle_block_count " +
                 std::to_string(n));
    }
  } else if (v.data_blocks != 0 || v.zero_blocks != 0 || v.kept_blocks != 0) {
    return bad("data_blocks, zero_blocks and kept_blocks must be 0 outside an apply-pending cycle (are " +
               std::to_string(v.data_blocks) + ", " + std::to_string(v.zero_blocks) + ", " +
               std::to_string(v.kept_blocks) + ")");
  }
  const ReplicaIdentity& id = v.replica;
  const auto kind = static_cast<std::uint8_t>(id.kind);
  if (kind > kMaxReplicaKind) {
    return bad("replica_kind " + std::to_string(kind) + " is not 0 to " + std::to_string(kMaxReplicaKind));
  }
  // What a kind does not record is 0, so equal files have equal encodings.
  if (id.kind == ReplicaKind::kUnknown && (id.dev != 0 || id.ino != 0 || id.mtime_ns != 0)) {
    return bad("replica_dev, replica_ino and replica_mtime_ns must be 0 when replica_kind is 0 (are " +
               std::to_string(id.dev) + ", " + std::to_string(id.ino) + ", " + std::to_string(id.mtime_ns) + ")");
  }
  if (id.kind == ReplicaKind::kBlockDevice && (id.ino != 0 || id.mtime_ns != 0)) {
    return bad("replica_ino and replica_mtime_ns must be 0 when replica_kind is 2 (a block device; are " +
               std::to_string(id.ino) + ", " + std::to_string(id.mtime_ns) + ")");
  }
  return Status::Ok();
}

}  // namespace

VolumeState* GuestState::Find(const std::string& name) {
  for (VolumeState& v : volumes) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

const VolumeState* GuestState::Find(const std::string& name) const {
  return const_cast<GuestState*>(this)->Find(name);
}

std::vector<std::byte> EncodeGuestState(const GuestState& s) {
  std::vector<std::byte> out;
  core::ByteWriter w(out);
  w.U32(kStateMagic);
  w.U32(kStateVersion);
  w.String16(s.job);
  w.U64(s.next_staging_id);
  w.U32(s.attempt);
  w.U64(s.cycle_id);
  w.U8(s.mode);
  w.U8(s.apply_pending ? 1 : 0);
  w.U32(static_cast<std::uint32_t>(s.volumes.size()));
  for (const VolumeState& v : s.volumes) {
    w.String16(v.name);
    w.U64(v.size_bytes);
    w.U32(v.block_size_bytes);
    w.U64(v.committed_epoch);
    w.U8(v.incomplete ? 1 : 0);
    w.U64(v.staging.staging_id);
    w.U8(v.staging.in_place ? 1 : 0);
    w.U64(v.staging.base_epoch);
    w.U64(v.staging.volume_size_bytes);
    w.U32(v.staging.block_size_bytes);
    w.U8(v.in_cycle ? 1 : 0);
    w.U64(v.cycle_epoch);
    w.U64(v.cycle_block_count);
    w.U64(v.data_blocks);
    w.U64(v.zero_blocks);
    w.U64(v.kept_blocks);
    w.U8(static_cast<std::uint8_t>(v.replica.kind));
    w.U64(v.replica.dev);
    w.U64(v.replica.ino);
    w.U64(v.replica.mtime_ns);
  }
  w.U64(core::Xxh3_64(out));
  return out;
}

Status ValidateGuestState(const GuestState& s) {
  if (!s.job.empty() && !core::IsValidName(s.job)) {
    return Bad("job is not a valid name (1-64 bytes of [A-Za-z0-9._-], not starting with '.' or '-')");
  }
  if (s.next_staging_id == 0) return Bad("next_staging_id is 0");
  if (s.mode > kMaxMode) return Bad("mode " + std::to_string(s.mode) + " is not 0 to " + std::to_string(kMaxMode));
  if ((s.cycle_id == 0) != (s.mode == 0)) {
    return Bad("cycle_id " + std::to_string(s.cycle_id) + " and mode " + std::to_string(s.mode) +
               " disagree on whether there is a cycle");
  }
  if (s.apply_pending && s.cycle_id == 0) return Bad("apply_pending is 1 without a cycle (cycle_id 0)");
  if (s.volumes.size() > kMaxVolumes) {
    return Bad("volume_count " + std::to_string(s.volumes.size()) + " exceeds " + std::to_string(kMaxVolumes));
  }
  std::set<std::string_view> names;
  for (std::size_t i = 0; i < s.volumes.size(); ++i) {
    BLKREP_RETURN_IF_ERROR(CheckVolume(s, i, s.volumes[i]));
    if (!names.insert(s.volumes[i].name).second) {
      return Bad("volume " + std::to_string(i) + " (" + s.volumes[i].name + "): name appears twice");
    }
  }
  return Status::Ok();
}

Result<GuestState> DecodeGuestState(std::span<const std::byte> bytes) {
  if (bytes.size() < 16) return Bad("too short");
  if (bytes.size() > kMaxStateFileBytes) {
    return Bad(std::to_string(bytes.size()) + " bytes, more than any state file has");
  }
  std::span<const std::byte> body = bytes.first(bytes.size() - 8);
  if (core::Xxh3_64(body) != core::LoadLe64(bytes.data() + body.size())) return Bad("checksum mismatch");
  FieldReader r(body);
  if (r.U32("magic") != kStateMagic) return Bad("bad magic");
  const std::uint32_t version = r.U32("version");
  if (version != kStateVersion && version != kStateVersion1) return Bad("unknown version " + std::to_string(version));
  const std::uint64_t field_bytes = version == kStateVersion1 ? kVolumeFieldBytesV1 : kVolumeFieldBytes;
  GuestState s;
  s.job = r.Name("job");
  s.next_staging_id = r.U64("next_staging_id");
  s.attempt = r.U32("attempt");
  s.cycle_id = r.U64("cycle_id");
  s.mode = r.U8("mode");
  s.apply_pending = r.Bool("apply_pending");
  std::uint32_t count = r.U32("volume_count");
  BLKREP_RETURN_IF_ERROR(r.status());
  if (count > kMaxVolumes) {
    return Bad("volume_count " + std::to_string(count) + " exceeds " + std::to_string(kMaxVolumes));
  }
  // Every entry takes at least 2 + 91 (version 1) or 2 + 116 bytes: a count
  // the file cannot hold is refused before anything is sized by it.
  if (count > r.remaining() / (2 + field_bytes)) {
    return Bad("volume_count " + std::to_string(count) + " does not fit in the file");
  }
  s.volumes.reserve(count);
  for (std::uint32_t i = 0; i < count && r.status().ok(); ++i) {
    r.set_where("volume " + std::to_string(i));
    VolumeState v;
    v.name = r.Name("name");
    v.size_bytes = r.U64("size_bytes");
    v.block_size_bytes = r.U32("block_size_bytes");
    v.committed_epoch = r.U64("committed_epoch");
    v.incomplete = r.Bool("incomplete");
    v.staging.staging_id = r.U64("staging_id");
    v.staging.in_place = r.Bool("staging_in_place");
    v.staging.base_epoch = r.U64("staging_base_epoch");
    v.staging.volume_size_bytes = r.U64("staging_volume_size_bytes");
    v.staging.block_size_bytes = r.U32("staging_block_size_bytes");
    v.in_cycle = r.Bool("in_cycle");
    v.cycle_epoch = r.U64("cycle_epoch");
    v.cycle_block_count = r.U64("cycle_block_count");
    v.data_blocks = r.U64("data_blocks");
    v.zero_blocks = r.U64("zero_blocks");
    v.kept_blocks = r.U64("kept_blocks");
    if (version != kStateVersion1) {
      // Any byte is a ReplicaKind (its underlying type); ValidateGuestState
      // refuses the unknown ones.
      v.replica.kind = static_cast<ReplicaKind>(r.U8("replica_kind"));
      v.replica.dev = r.U64("replica_dev");
      v.replica.ino = r.U64("replica_ino");
      v.replica.mtime_ns = r.U64("replica_mtime_ns");
    }
    s.volumes.push_back(std::move(v));
  }
  BLKREP_RETURN_IF_ERROR(r.status());
  if (r.remaining() != 0) return Bad(std::to_string(r.remaining()) + " bytes follow the last volume");
  BLKREP_RETURN_IF_ERROR(ValidateGuestState(s));
  return s;
}

Result<GuestState> ReadGuestStateFile(core::FileSystem& fs, const std::string& guest_dir) {
  std::string path = guest_dir + "/" + kStateFileName;
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(path));
  if (!exists) return GuestState{};
  // Not core::ReadWholeFile: the file's size is checked before it sizes a buffer.
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file, fs.Open(path, core::OpenMode::kReadOnly));
  BLKREP_ASSIGN_OR_RETURN(std::uint64_t size, file->Size());
  if (size > kMaxStateFileBytes) {
    return Bad(std::to_string(size) + " bytes, more than any state file has").WithContext(path);
  }
  std::vector<std::byte> bytes(static_cast<std::size_t>(size));
  BLKREP_ASSIGN_OR_RETURN(std::size_t got, file->ReadAt(0, bytes));
  bytes.resize(got);
  Result<GuestState> state = DecodeGuestState(bytes);
  if (!state.ok()) return state.status().WithContext(path);
  return state;
}

Status WriteGuestStateFile(core::FileSystem& fs, const std::string& guest_dir, const GuestState& state) {
  std::string path = guest_dir + "/" + kStateFileName;
  std::string tmp = path + ".tmp";
  std::vector<std::byte> bytes = EncodeGuestState(state);
  {
    BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file, fs.Open(tmp, core::OpenMode::kCreateTruncate));
    BLKREP_RETURN_IF_ERROR(file->WriteAt(0, bytes));
    BLKREP_RETURN_IF_ERROR(file->Sync());
  }
  BLKREP_RETURN_IF_ERROR(fs.Rename(tmp, path));
  return fs.SyncDir(guest_dir);
}

// The identity (guest_state.h) of the file `st` describes: a regular file
// by device, inode and modification time, a block device by its device
// number only (docs/replica-format.md, "Replica identity").
ReplicaIdentity ReplicaIdentityOf(const struct stat& st) {
  ReplicaIdentity id;
  if (S_ISREG(st.st_mode)) {
    id.kind = ReplicaKind::kRegularFile;
    id.dev = static_cast<std::uint64_t>(st.st_dev);
    id.ino = static_cast<std::uint64_t>(st.st_ino);
    id.mtime_ns = static_cast<std::uint64_t>(st.st_mtim.tv_sec) * 1000000000U +
                  static_cast<std::uint64_t>(st.st_mtim.tv_nsec);
  } else if (S_ISBLK(st.st_mode)) {
    id.kind = ReplicaKind::kBlockDevice;
    id.dev = static_cast<std::uint64_t>(st.st_rdev);
  }
  return id;
}

}  // namespace blkrep::receiver
