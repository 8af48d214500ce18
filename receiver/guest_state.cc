#include "receiver/guest_state.h"

#include "core/bytes.h"
#include "core/hash.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;

namespace {

constexpr std::uint32_t kStateMagic = 0x47524B42;  // "BKRG"
constexpr std::uint32_t kStateVersion = 1;
constexpr std::size_t kMaxNameBytes = 64;
constexpr std::uint32_t kMaxVolumes = 4096;

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
  }
  w.U64(core::Xxh3_64(out));
  return out;
}

Result<GuestState> DecodeGuestState(std::span<const std::byte> bytes) {
  auto bad = [](const std::string& what) { return Status::Corruption("guest state file: " + what); };
  if (bytes.size() < 16) return bad("too short");
  std::span<const std::byte> body = bytes.first(bytes.size() - 8);
  if (core::Xxh3_64(body) != core::LoadLe64(bytes.data() + body.size())) return bad("checksum mismatch");
  core::ByteReader r(body);
  if (r.U32() != kStateMagic) return bad("bad magic");
  if (std::uint32_t version = r.U32(); version != kStateVersion) {
    return bad("unknown version " + std::to_string(version));
  }
  GuestState s;
  s.job = r.String16(kMaxNameBytes);
  s.next_staging_id = r.U64();
  s.attempt = r.U32();
  s.cycle_id = r.U64();
  s.mode = r.U8();
  s.apply_pending = r.U8() != 0;
  std::uint32_t count = r.U32();
  if (count > kMaxVolumes) return bad("too many volumes");
  for (std::uint32_t i = 0; i < count && r.ok(); ++i) {
    VolumeState v;
    v.name = r.String16(kMaxNameBytes);
    v.size_bytes = r.U64();
    v.block_size_bytes = r.U32();
    v.committed_epoch = r.U64();
    v.incomplete = r.U8() != 0;
    v.staging.staging_id = r.U64();
    v.staging.in_place = r.U8() != 0;
    v.staging.base_epoch = r.U64();
    v.staging.volume_size_bytes = r.U64();
    v.staging.block_size_bytes = r.U32();
    v.in_cycle = r.U8() != 0;
    v.cycle_epoch = r.U64();
    v.cycle_block_count = r.U64();
    v.data_blocks = r.U64();
    v.zero_blocks = r.U64();
    v.kept_blocks = r.U64();
    s.volumes.push_back(std::move(v));
  }
  if (!r.ok()) return bad("truncated");
  if (r.remaining() != 0) return bad("trailing bytes");
  return s;
}

Result<GuestState> ReadGuestStateFile(core::FileSystem& fs, const std::string& guest_dir) {
  std::string path = guest_dir + "/" + kStateFileName;
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(path));
  if (!exists) return GuestState{};
  BLKREP_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, core::ReadWholeFile(fs, path));
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

}  // namespace blkrep::receiver
