#include "receiver/recovery_points.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <set>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/names.h"
#include "proto/frame.h"
#include "receiver/replica_layout.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;

namespace {

constexpr std::uint32_t kHeadMagic = 0x50524B42;  // "BKRP"
constexpr std::uint32_t kUndoMagic = 0x55524B42;  // "BKRU"
constexpr std::uint32_t kPointsVersion = 1;
constexpr std::uint64_t kHeadBytes = 56;
constexpr std::uint32_t kMaxVolumes = 4096;
constexpr std::uint64_t kExtentBytes = 24;
constexpr std::uint64_t kCopyChunkBytes = 8U << 20;
constexpr const char* kUndoSuffix = ".undo";

std::uint64_t BlockCount(std::uint64_t size_bytes, std::uint32_t block_size_bytes) {
  return (size_bytes + block_size_bytes - 1) / block_size_bytes;
}

// Bytes of blocks [first, first + count) of a volume of size_bytes.
std::uint64_t RangeBytes(std::uint64_t size_bytes, std::uint32_t bs, std::uint64_t first, std::uint64_t count) {
  std::uint64_t start = first * bs;
  std::uint64_t end = std::min(size_bytes, (first + count) * bs);
  return end > start ? end - start : 0;
}

bool ValidGeometry(std::uint64_t size_bytes, std::uint32_t bs) {
  if (size_bytes == 0 && bs == 0) return true;
  return bs >= proto::kMinBlockSizeBytes && bs <= proto::kMaxBlockSizeBytes && (bs & (bs - 1)) == 0 &&
         size_bytes >= 1 && size_bytes <= proto::kMaxVolumeSizeBytes;
}

std::string PointsDir(const std::string& guest_dir) { return guest_dir + "/" + kPointsDirName; }
std::string HeadPath(const std::string& guest_dir) { return PointsDir(guest_dir) + "/" + kPointsHeadName; }
std::string UndoPath(const std::string& guest_dir, std::uint64_t id) {
  return PointsDir(guest_dir) + "/" + std::to_string(id) + kUndoSuffix;
}

// "ID.undo" with ID a decimal without leading zeros, >= 1.
std::optional<std::uint64_t> UndoFileId(const std::string& name) {
  if (!name.ends_with(kUndoSuffix)) return std::nullopt;
  std::string_view digits(name.data(), name.size() - std::string_view(kUndoSuffix).size());
  if (digits.empty() || digits[0] == '0') return std::nullopt;
  std::uint64_t id = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return id;
}

Status BadHead(const std::string& what) { return Status::Corruption("points head: " + what); }
Status BadUndo(const std::string& what) { return Status::Corruption("undo file: " + what); }

// Writes `bytes` to `path` atomically and durably (tmp, fdatasync, rename,
// fsync of the directory).
Status ReplaceFile(core::FileSystem& fs, const std::string& path, std::span<const std::byte> bytes) {
  const std::string tmp = path + ".tmp";
  {
    BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> f, fs.Open(tmp, core::OpenMode::kCreateTruncate));
    BLKREP_RETURN_IF_ERROR(f->WriteAt(0, bytes));
    BLKREP_RETURN_IF_ERROR(f->Sync());
  }
  BLKREP_RETURN_IF_ERROR(fs.Rename(tmp, path));
  return fs.SyncDir(core::DirName(path));
}

// The head; nullopt when there is none.
Result<std::optional<PointsHead>> ReadHead(core::FileSystem& fs, const std::string& guest_dir) {
  const std::string path = HeadPath(guest_dir);
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(path));
  if (!exists) return std::optional<PointsHead>();
  BLKREP_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, core::ReadWholeFile(fs, path));
  Result<PointsHead> head = DecodePointsHead(bytes);
  if (!head.ok()) return head.status().WithContext(path);
  return std::optional<PointsHead>(*head);
}

Status WriteHead(core::FileSystem& fs, const std::string& guest_dir, const PointsHead& head) {
  BLKREP_RETURN_IF_ERROR(fs.CreateDirectories(PointsDir(guest_dir)));
  return ReplaceFile(fs, HeadPath(guest_dir), EncodePointsHead(head));
}

struct UndoFile {
  std::uint64_t id = 0;  // from the name
  std::string path;
  std::uint64_t size_bytes = 0;
  UndoMeta meta;
};

// Reads and validates the metadata of one undo file.
Result<UndoFile> ReadUndoFile(core::FileSystem& fs, const std::string& path, std::uint64_t id,
                              std::unique_ptr<core::File>* keep_open = nullptr) {
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> f, fs.Open(path, core::OpenMode::kReadOnly));
  BLKREP_ASSIGN_OR_RETURN(std::uint64_t size, f->Size());
  auto bad = [&](const Status& s) { return s.WithContext(path); };
  if (size < kUndoFixedHeaderBytes) {
    return bad(BadUndo("file has " + std::to_string(size) + " bytes, less than its header"));
  }
  std::vector<std::byte> header(kUndoFixedHeaderBytes);
  BLKREP_ASSIGN_OR_RETURN(std::size_t got, f->ReadAt(0, header));
  if (got != header.size()) return bad(BadUndo("header is truncated"));
  const std::uint64_t meta_bytes = core::LoadLe64(header.data() + 8);
  if (meta_bytes < kUndoFixedHeaderBytes + 8 || meta_bytes > size || meta_bytes > kMaxUndoMetaBytes) {
    return bad(BadUndo("meta_bytes " + std::to_string(meta_bytes) + " does not fit a file of " +
                       std::to_string(size) + " bytes"));
  }
  std::vector<std::byte> meta(meta_bytes);
  BLKREP_ASSIGN_OR_RETURN(got, f->ReadAt(0, meta));
  if (got != meta.size()) return bad(BadUndo("metadata is truncated"));
  Result<UndoMeta> decoded = DecodeUndoMeta(meta, size);
  if (!decoded.ok()) return bad(decoded.status());
  if (decoded->point_id != id) {
    return bad(BadUndo("point_id " + std::to_string(decoded->point_id) + " is not the file's name"));
  }
  UndoFile out{id, path, size, std::move(*decoded)};
  if (keep_open != nullptr) *keep_open = std::move(f);
  return out;
}

// The undo files in .points/ by id (every "ID.undo"; tmp files ignored).
Result<std::vector<std::pair<std::uint64_t, std::string>>> ListUndoFiles(core::FileSystem& fs,
                                                                         const std::string& guest_dir) {
  std::vector<std::pair<std::uint64_t, std::string>> out;
  const std::string dir = PointsDir(guest_dir);
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(dir));
  if (!exists) return out;
  BLKREP_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.List(dir));
  for (const std::string& name : names) {
    if (std::optional<std::uint64_t> id = UndoFileId(name)) out.emplace_back(*id, dir + "/" + name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The undo files that chain to the latest point `latest_id`, oldest first.
// Files outside the chain (garbage of a crash) are skipped; a damaged file
// is kCorruption.
Result<std::vector<UndoFile>> LoadChain(core::FileSystem& fs, const std::string& guest_dir, std::uint64_t latest_id) {
  BLKREP_ASSIGN_OR_RETURN(auto files, ListUndoFiles(fs, guest_dir));
  std::vector<UndoFile> all;
  for (const auto& [id, path] : files) {
    Result<UndoFile> f = ReadUndoFile(fs, path, id);
    if (!f.ok() && f.status().code() == core::Code::kNotFound) continue;  // removed meanwhile
    BLKREP_RETURN_IF_ERROR(f.status());
    all.push_back(std::move(*f));
  }
  std::vector<UndoFile> chain;
  std::uint64_t want = latest_id;
  while (want != 0) {
    auto it = std::find_if(all.begin(), all.end(),
                           [&](const UndoFile& f) { return f.meta.next_point_id == want && f.id < want; });
    if (it == all.end()) break;
    want = it->id;
    chain.push_back(std::move(*it));
    all.erase(it);
  }
  std::reverse(chain.begin(), chain.end());
  return chain;
}

Status RemoveUndoFiles(core::FileSystem& fs, const std::string& guest_dir,
                       const std::function<bool(std::uint64_t)>& remove) {
  const std::string dir = PointsDir(guest_dir);
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(dir));
  if (!exists) return Status::Ok();
  BLKREP_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.List(dir));
  std::vector<std::pair<std::uint64_t, std::string>> doomed;
  for (const std::string& name : names) {
    if (name.ends_with(".undo.tmp")) {
      doomed.emplace_back(0, name);
    } else if (std::optional<std::uint64_t> id = UndoFileId(name); id && remove(*id)) {
      doomed.emplace_back(*id, name);
    }
  }
  if (doomed.empty()) return Status::Ok();
  // Oldest first: what a crash leaves is the newest part of the chain,
  // which still ends at the replica.
  std::sort(doomed.begin(), doomed.end());
  for (const auto& [id, name] : doomed) {
    Status s = fs.Remove(dir + "/" + name);
    if (!s.ok() && s.code() != core::Code::kNotFound) return s;
  }
  return fs.SyncDir(dir);
}

std::uint64_t NowSeconds() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

// Captures undo file `meta.point_id`: the replica contents of `ranges` of
// each in-cycle volume. Durable before it returns.
Status Capture(core::FileSystem& fs, const std::string& replica_dir, const std::string& guest,
               const std::string& guest_dir, UndoMeta& meta,
               const std::vector<std::vector<BlockRange>>& ranges_by_volume) {
  for (std::size_t vi = 0; vi < meta.volumes.size(); ++vi) {
    for (const BlockRange& r : ranges_by_volume[vi]) {
      meta.extents.push_back({static_cast<std::uint32_t>(vi), r.first, r.count, 0, 0});
    }
  }
  std::uint64_t total_blocks = 0;
  for (const UndoExtent& e : meta.extents) total_blocks += e.block_count;
  meta.hashes.assign(total_blocks, 0);
  std::vector<std::byte> encoded = EncodeUndoMeta(meta);  // sizes and offsets
  const std::string path = UndoPath(guest_dir, meta.point_id);
  const std::string tmp = path + ".tmp";
  BLKREP_RETURN_IF_ERROR(fs.CreateDirectories(PointsDir(guest_dir)));
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> out, fs.Open(tmp, core::OpenMode::kCreateTruncate));
  std::vector<std::byte> buffer;
  std::uint32_t current_volume = ~0U;
  std::unique_ptr<core::FileBlockDevice> replica;
  for (const UndoExtent& e : meta.extents) {
    const PointVolume& v = meta.volumes[e.volume];
    if (e.volume != current_volume) {
      BLKREP_ASSIGN_OR_RETURN(std::string rpath, ReplicaPath(replica_dir, guest, v.name));
      BLKREP_ASSIGN_OR_RETURN(replica, core::FileBlockDevice::Open(rpath, {.read_only = true, .direct_io = false}));
      current_volume = e.volume;
    }
    const std::uint32_t bs = v.block_size_bytes;
    const std::uint64_t chunk_blocks = std::max<std::uint64_t>(1, kCopyChunkBytes / bs);
    for (std::uint64_t done = 0; done < e.block_count;) {
      std::uint64_t n = std::min(chunk_blocks, e.block_count - done);
      buffer.resize(RangeBytes(v.size_bytes, bs, e.first_block + done, n));
      BLKREP_RETURN_IF_ERROR(replica->Read((e.first_block + done) * bs, buffer));
      for (std::uint64_t i = 0; i < n; ++i) {
        std::span<const std::byte> block =
            std::span(buffer).subspan(i * bs, std::min<std::uint64_t>(bs, buffer.size() - i * bs));
        meta.hashes[e.first_hash + done + i] = core::Xxh3_64(block);
      }
      BLKREP_RETURN_IF_ERROR(out->WriteAt(e.data_offset + done * bs, buffer));
      done += n;
    }
  }
  encoded = EncodeUndoMeta(meta);
  BLKREP_RETURN_IF_ERROR(out->WriteAt(0, encoded));
  BLKREP_RETURN_IF_ERROR(out->Sync());
  out.reset();
  BLKREP_RETURN_IF_ERROR(fs.Rename(tmp, path));
  return fs.SyncDir(PointsDir(guest_dir));
}

// Reads the bytes of block `block` (an extent block of `meta`) from an
// undo file, checked against its hash.
Status ReadUndoBlock(core::File& file, const std::string& path, const UndoMeta& meta, const UndoExtent& e,
                     std::uint64_t block, std::vector<std::byte>& out) {
  const PointVolume& v = meta.volumes[e.volume];
  const std::uint32_t bs = v.block_size_bytes;
  out.resize(RangeBytes(v.size_bytes, bs, block, 1));
  const std::uint64_t i = block - e.first_block;
  BLKREP_ASSIGN_OR_RETURN(std::size_t got, file.ReadAt(e.data_offset + i * bs, out));
  if (got != out.size()) {
    return Status::Corruption(path + ": undo file: data of block " + std::to_string(block) + " is truncated");
  }
  if (core::Xxh3_64(std::span<const std::byte>(out)) != meta.hashes[e.first_hash + i]) {
    return Status::Corruption(path + ": undo file: block " + std::to_string(block) + " of volume " + v.name +
                              " does not match its hash");
  }
  return Status::Ok();
}

// The extents of volume `vi` of `meta`, in block order.
std::vector<std::size_t> ExtentsOf(const UndoMeta& meta, std::uint32_t vi) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < meta.extents.size(); ++i) {
    if (meta.extents[i].volume == vi) out.push_back(i);
  }
  return out;
}

std::optional<std::uint32_t> VolumeIndex(const UndoMeta& meta, const std::string& name) {
  for (std::size_t i = 0; i < meta.volumes.size(); ++i) {
    if (meta.volumes[i].name == name) return static_cast<std::uint32_t>(i);
  }
  return std::nullopt;
}

struct GuestPoints {
  GuestState state;
  PointsHead head;
  bool has_head = false;
  std::vector<UndoFile> chain;
};

// The state, head and chain, checked to be usable: no apply pending, no
// rollback under way.
Result<GuestPoints> LoadGuestPoints(core::FileSystem& fs, const std::string& replica_dir, const std::string& guest,
                                    bool allow_rollback_mark = false) {
  BLKREP_RETURN_IF_ERROR(ReplicaPath(replica_dir, guest, "x").status());
  const std::string guest_dir = replica_dir + "/" + guest;
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(guest_dir + "/" + kStateFileName));
  if (!exists) return Status::NotFound("the receiver holds no replica of guest " + guest + " under " + replica_dir);
  BLKREP_ASSIGN_OR_RETURN(bool promoted, fs.Exists(guest_dir + "/" + kPromotedFileName));
  if (promoted) {
    return Status::Aborted("guest " + guest + " is promoted on this node: its replicas are a running source, "
                           "with no recovery points");
  }
  GuestPoints out;
  BLKREP_ASSIGN_OR_RETURN(out.state, ReadGuestStateFile(fs, guest_dir));
  if (out.state.apply_pending) {
    return Status::Aborted("guest " + guest + " has a cycle waiting to be applied (the next session applies it)");
  }
  BLKREP_ASSIGN_OR_RETURN(std::optional<PointsHead> head, ReadHead(fs, guest_dir));
  if (head) {
    out.head = *head;
    out.has_head = true;
  }
  if (out.head.rollback_to != 0 && !allow_rollback_mark) {
    return Status::Aborted("a rollback of guest " + guest + " to point " + std::to_string(out.head.rollback_to) +
                           " did not finish; run it again");
  }
  if (out.head.point_id != 0) {
    BLKREP_ASSIGN_OR_RETURN(out.chain, LoadChain(fs, guest_dir, out.head.point_id));
  }
  return out;
}

}  // namespace

// ---- Encoding and decoding.

std::vector<std::byte> EncodePointsHead(const PointsHead& head) {
  std::vector<std::byte> out;
  core::ByteWriter w(out);
  w.U32(kHeadMagic);
  w.U32(kPointsVersion);
  w.U64(head.point_id);
  w.U64(head.next_id);
  w.U64(head.commit_time);
  w.U32(head.attempt);
  w.U32(0);
  w.U64(head.rollback_to);
  w.U64(core::Xxh3_64(out.data(), out.size()));
  return out;
}

Result<PointsHead> DecodePointsHead(std::span<const std::byte> bytes) {
  if (bytes.size() != kHeadBytes) {
    return BadHead("file has " + std::to_string(bytes.size()) + " bytes, not " + std::to_string(kHeadBytes));
  }
  if (core::Xxh3_64(bytes.data(), kHeadBytes - 8) != core::LoadLe64(bytes.data() + kHeadBytes - 8)) {
    return BadHead("checksum mismatch");
  }
  core::ByteReader r(bytes);
  if (r.U32() != kHeadMagic) return BadHead("magic is not BKRP");
  if (std::uint32_t v = r.U32(); v != kPointsVersion) return BadHead("version " + std::to_string(v) + " is not 1");
  PointsHead h;
  h.point_id = r.U64();
  h.next_id = r.U64();
  h.commit_time = r.U64();
  h.attempt = r.U32();
  if (r.U32() != 0) return BadHead("reserved bytes are not 0");
  h.rollback_to = r.U64();
  if (h.next_id <= h.point_id) {
    return BadHead("next_id " + std::to_string(h.next_id) + " is not after point_id " + std::to_string(h.point_id));
  }
  if (h.rollback_to >= h.next_id) {
    return BadHead("rollback_to " + std::to_string(h.rollback_to) + " is not an id given out");
  }
  return h;
}

std::vector<std::byte> EncodeUndoMeta(UndoMeta& meta) {
  std::uint64_t volume_bytes = 0;
  for (const PointVolume& v : meta.volumes) volume_bytes += 2 + v.name.size() + 20;
  std::uint64_t total_blocks = 0;
  for (const UndoExtent& e : meta.extents) total_blocks += e.block_count;
  meta.meta_bytes = kUndoFixedHeaderBytes + volume_bytes + kExtentBytes * meta.extents.size() + 8 * total_blocks + 8;
  std::uint64_t offset = meta.meta_bytes, hash = 0;
  for (UndoExtent& e : meta.extents) {
    const PointVolume& v = meta.volumes[e.volume];
    e.data_offset = offset;
    e.first_hash = hash;
    offset += RangeBytes(v.size_bytes, v.block_size_bytes, e.first_block, e.block_count);
    hash += e.block_count;
  }
  meta.data_bytes = offset - meta.meta_bytes;
  std::vector<std::byte> out;
  out.reserve(meta.meta_bytes);
  core::ByteWriter w(out);
  w.U32(kUndoMagic);
  w.U32(kPointsVersion);
  w.U64(meta.meta_bytes);
  w.U64(meta.point_id);
  w.U64(meta.next_point_id);
  w.U64(meta.commit_time);
  w.U32(meta.attempt);
  w.U32(meta.retain);
  w.U32(static_cast<std::uint32_t>(meta.volumes.size()));
  w.U32(0);
  w.U64(meta.extents.size());
  for (const PointVolume& v : meta.volumes) {
    w.String16(v.name);
    w.U64(v.epoch);
    w.U64(v.size_bytes);
    w.U32(v.block_size_bytes);
  }
  for (const UndoExtent& e : meta.extents) {
    w.U32(e.volume);
    w.U32(0);
    w.U64(e.first_block);
    w.U64(e.block_count);
  }
  for (std::uint64_t h : meta.hashes) w.U64(h);
  w.U64(core::Xxh3_64(out.data(), out.size()));
  return out;
}

Result<UndoMeta> DecodeUndoMeta(std::span<const std::byte> bytes, std::uint64_t file_size_bytes) {
  if (bytes.size() < kUndoFixedHeaderBytes + 8) {
    return BadUndo("metadata has " + std::to_string(bytes.size()) + " bytes, less than a header");
  }
  core::ByteReader r(bytes);
  if (r.U32() != kUndoMagic) return BadUndo("magic is not BKRU");
  if (std::uint32_t v = r.U32(); v != kPointsVersion) return BadUndo("version " + std::to_string(v) + " is not 1");
  UndoMeta m;
  m.meta_bytes = r.U64();
  if (m.meta_bytes != bytes.size() || m.meta_bytes > file_size_bytes) {
    return BadUndo("meta_bytes " + std::to_string(m.meta_bytes) + " is not the " + std::to_string(bytes.size()) +
                   " bytes read, inside a file of " + std::to_string(file_size_bytes));
  }
  if (core::Xxh3_64(bytes.data(), bytes.size() - 8) != core::LoadLe64(bytes.data() + bytes.size() - 8)) {
    return BadUndo("checksum mismatch");
  }
  m.point_id = r.U64();
  m.next_point_id = r.U64();
  m.commit_time = r.U64();
  m.attempt = r.U32();
  m.retain = r.U32();
  const std::uint32_t volume_count = r.U32();
  const std::uint32_t reserved = r.U32();
  const std::uint64_t extent_count = r.U64();
  if (m.point_id == 0) return BadUndo("point_id 0");
  if (m.next_point_id <= m.point_id) {
    return BadUndo("next_point_id " + std::to_string(m.next_point_id) + " is not after point_id " +
                   std::to_string(m.point_id));
  }
  if (m.retain == 0 || m.retain > kMaxKeptRecoveryPoints) {
    return BadUndo("retain " + std::to_string(m.retain) + " is not 1 to 24");
  }
  if (reserved != 0) return BadUndo("reserved bytes are not 0");
  if (volume_count == 0 || volume_count > kMaxVolumes) {
    return BadUndo("volume_count " + std::to_string(volume_count) + " is not 1 to 4096");
  }
  // Each volume takes 23 bytes at least, each extent 24 and a hash per block.
  const std::uint64_t body = bytes.size() - kUndoFixedHeaderBytes - 8;
  if (volume_count * std::uint64_t{22} > body) return BadUndo("volume_count " + std::to_string(volume_count) + " does not fit");
  if (extent_count > body / kExtentBytes) {
    return BadUndo("extent_count " + std::to_string(extent_count) + " does not fit the metadata");
  }
  std::set<std::string> names;
  for (std::uint32_t i = 0; i < volume_count; ++i) {
    PointVolume v;
    const std::string where = "volume " + std::to_string(i) + ": ";
    v.name = r.String16(core::kMaxNameBytes);
    v.epoch = r.U64();
    v.size_bytes = r.U64();
    v.block_size_bytes = r.U32();
    if (!r.ok() || r.remaining() < 8) return BadUndo(where + "is truncated");
    if (!core::IsValidName(v.name)) return BadUndo(where + "name is not a volume name");
    if (!names.insert(v.name).second) return BadUndo(where + "name " + v.name + " twice");
    if (!ValidGeometry(v.size_bytes, v.block_size_bytes) || v.size_bytes == 0) {
      return BadUndo(where + "size_bytes " + std::to_string(v.size_bytes) + " and block_size_bytes " +
                     std::to_string(v.block_size_bytes) + " are no volume geometry");
    }
    if (v.epoch == 0) return BadUndo(where + "epoch 0");
    m.volumes.push_back(std::move(v));
  }
  if (extent_count * kExtentBytes > r.remaining() - 8) {
    return BadUndo("extent_count " + std::to_string(extent_count) + " does not fit the metadata");
  }
  std::uint64_t total_blocks = 0, data_bytes = 0;
  std::uint32_t prev_volume = 0;
  std::uint64_t prev_end = 0;
  m.extents.reserve(extent_count);
  for (std::uint64_t i = 0; i < extent_count; ++i) {
    UndoExtent e;
    const std::string where = "extent " + std::to_string(i) + ": ";
    e.volume = r.U32();
    std::uint32_t pad = r.U32();
    e.first_block = r.U64();
    e.block_count = r.U64();
    if (e.volume >= volume_count) return BadUndo(where + "volume " + std::to_string(e.volume) + " is not listed");
    if (pad != 0) return BadUndo(where + "reserved bytes are not 0");
    const PointVolume& v = m.volumes[e.volume];
    const std::uint64_t blocks = BlockCount(v.size_bytes, v.block_size_bytes);
    if (e.block_count == 0 || e.first_block >= blocks || e.block_count > blocks - e.first_block) {
      return BadUndo(where + "blocks [" + std::to_string(e.first_block) + ", +" + std::to_string(e.block_count) +
                     ") are not inside volume " + v.name);
    }
    if (i > 0 && (e.volume < prev_volume || (e.volume == prev_volume && e.first_block < prev_end))) {
      return BadUndo(where + "is not after the extent before it");
    }
    prev_volume = e.volume;
    prev_end = e.first_block + e.block_count;
    e.first_hash = total_blocks;
    total_blocks += e.block_count;  // <= 4096 volumes x 2^60 blocks: no overflow
    e.data_offset = data_bytes;      // relative for now
    data_bytes += RangeBytes(v.size_bytes, v.block_size_bytes, e.first_block, e.block_count);
    m.extents.push_back(e);
  }
  if (total_blocks != (r.remaining() - 8) / 8 || (r.remaining() - 8) % 8 != 0) {
    return BadUndo("the extents hold " + std::to_string(total_blocks) + " blocks, the metadata " +
                   std::to_string((r.remaining() - 8) / 8) + " hashes");
  }
  m.hashes.resize(total_blocks);
  for (std::uint64_t& h : m.hashes) h = r.U64();
  if (file_size_bytes - m.meta_bytes != data_bytes) {
    return BadUndo("the file holds " + std::to_string(file_size_bytes - m.meta_bytes) +
                   " data bytes, the extents name " + std::to_string(data_bytes));
  }
  m.data_bytes = data_bytes;
  for (UndoExtent& e : m.extents) e.data_offset += m.meta_bytes;
  return m;
}

// ---- The receiver's apply.

Status DropAllPoints(core::FileSystem& fs, const std::string& guest_dir) {
  BLKREP_RETURN_IF_ERROR(RemoveUndoFiles(fs, guest_dir, [](std::uint64_t) { return true; }));
  Result<std::optional<PointsHead>> head = ReadHead(fs, guest_dir);
  if (!head.ok()) {
    // A damaged head: start a new counter after the ids seen (none now).
    (void)fs.Remove(HeadPath(guest_dir));
    return fs.SyncDir(PointsDir(guest_dir));
  }
  if (*head && (*head)->rollback_to != 0) {
    PointsHead h = **head;
    h.rollback_to = 0;
    return WriteHead(fs, guest_dir, h);
  }
  return Status::Ok();
}

Status PrepareApply(core::FileSystem& fs, const std::string& replica_dir, const std::string& guest,
                    const GuestState& state, std::optional<std::uint32_t> retain,
                    const std::function<Result<std::vector<BlockRange>>(const VolumeState&)>& ranges_of,
                    PointsApply* out) {
  const std::string guest_dir = replica_dir + "/" + guest;
  *out = PointsApply{};
  Result<std::optional<PointsHead>> read = ReadHead(fs, guest_dir);
  if (!read.ok() && read.status().code() != core::Code::kCorruption) return read.status();
  bool damaged = !read.ok();
  std::optional<PointsHead> head = read.ok() ? *read : std::nullopt;
  const bool head_for_this = head && head->attempt == state.attempt && state.attempt != 0;
  PointsHead h = head.value_or(PointsHead{});
  std::uint64_t current_id = 0, new_id = 0;
  if (head_for_this) {
    new_id = h.point_id;
  } else {
    current_id = h.point_id != 0 ? h.point_id : h.next_id++;
    new_id = h.next_id;
  }
  out->write_head = (retain && *retain > 0) || head.has_value();
  out->head = PointsHead{new_id, std::max(h.next_id, new_id + 1), NowSeconds(), state.attempt, 0};

  const bool staged = state.mode != proto::CYCLE_MODE_FULL &&
                      std::none_of(state.volumes.begin(), state.volumes.end(),
                                   [](const VolumeState& v) { return v.in_cycle && v.staging.in_place; });
  if (damaged || h.rollback_to != 0 || !staged) return DropAllPoints(fs, guest_dir);
  if (!retain) {
    // A redo: keep the complete undo file this attempt captured, if any.
    BLKREP_ASSIGN_OR_RETURN(auto files, ListUndoFiles(fs, guest_dir));
    for (const auto& [id, path] : files) {
      Result<UndoFile> f = ReadUndoFile(fs, path, id);
      if (f.ok() && f->meta.attempt == state.attempt && f->meta.next_point_id == new_id) {
        out->retain = f->meta.retain;
        out->write_head = true;
        return Status::Ok();
      }
    }
    return DropAllPoints(fs, guest_dir);
  }
  if (*retain == 0 || head_for_this) return DropAllPoints(fs, guest_dir);
  // The point the replicas hold now, whole: every volume committed,
  // none incomplete.
  UndoMeta meta;
  meta.point_id = current_id;
  meta.next_point_id = new_id;
  meta.commit_time = head ? h.commit_time : 0;
  meta.attempt = state.attempt;
  meta.retain = std::min(*retain, kMaxKeptRecoveryPoints);
  std::vector<std::vector<BlockRange>> ranges;
  for (const VolumeState& vs : state.volumes) {
    if (vs.incomplete || (vs.in_cycle && vs.committed_epoch == 0)) return DropAllPoints(fs, guest_dir);
    if (vs.committed_epoch == 0) continue;  // never committed: not part of any point
    meta.volumes.push_back({vs.name, vs.committed_epoch, vs.size_bytes, vs.block_size_bytes});
    std::vector<BlockRange> r;
    if (vs.in_cycle) {
      BLKREP_ASSIGN_OR_RETURN(r, ranges_of(vs));
      const std::uint64_t blocks = BlockCount(vs.size_bytes, vs.block_size_bytes);
      for (const BlockRange& b : r) {
        if (b.count == 0 || b.first >= blocks || b.count > blocks - b.first) {
          return Status::Corruption("staging of volume " + vs.name + ": a record lies past the end of the volume");
        }
      }
    }
    ranges.push_back(std::move(r));
  }
  if (meta.volumes.empty()) return DropAllPoints(fs, guest_dir);
  // Undo files of this id or after it are garbage of an earlier crash.
  BLKREP_RETURN_IF_ERROR(RemoveUndoFiles(fs, guest_dir, [&](std::uint64_t id) { return id >= current_id; }));
  BLKREP_RETURN_IF_ERROR(Capture(fs, replica_dir, guest, guest_dir, meta, ranges));
  out->retain = meta.retain;
  return Status::Ok();
}

Status CommitHead(core::FileSystem& fs, const std::string& guest_dir, const PointsApply& apply) {
  if (!apply.write_head) return Status::Ok();
  return WriteHead(fs, guest_dir, apply.head);
}

Status Retain(core::FileSystem& fs, const std::string& guest_dir, const PointsApply& apply) {
  if (apply.retain == 0) return DropAllPoints(fs, guest_dir);
  Result<std::vector<UndoFile>> chain = LoadChain(fs, guest_dir, apply.head.point_id);
  if (!chain.ok()) return DropAllPoints(fs, guest_dir);  // a damaged file: keep nothing doubtful
  std::set<std::uint64_t> keep;
  for (std::size_t i = chain->size() > apply.retain ? chain->size() - apply.retain : 0; i < chain->size(); ++i) {
    keep.insert((*chain)[i].id);
  }
  return RemoveUndoFiles(fs, guest_dir, [&](std::uint64_t id) { return keep.count(id) == 0; });
}

// ---- Reading.

Result<std::vector<RecoveryPoint>> ListRecoveryPoints(const std::string& replica_dir, const std::string& guest) {
  core::FileSystem& fs = core::PosixFileSystemInstance();
  BLKREP_ASSIGN_OR_RETURN(GuestPoints g, LoadGuestPoints(fs, replica_dir, guest));
  std::vector<RecoveryPoint> out;
  for (const UndoFile& f : g.chain) {
    RecoveryPoint p;
    p.id = f.id;
    p.commit_time = f.meta.commit_time;
    p.volumes = f.meta.volumes;
    p.undo_bytes = f.size_bytes;
    out.push_back(std::move(p));
  }
  RecoveryPoint latest;
  latest.id = g.head.point_id;
  latest.commit_time = g.head.commit_time;
  latest.latest = true;
  for (const VolumeState& vs : g.state.volumes) {
    if (vs.committed_epoch == 0 && !vs.incomplete) continue;
    latest.volumes.push_back({vs.name, vs.incomplete ? 0 : vs.committed_epoch, vs.size_bytes, vs.block_size_bytes});
  }
  out.push_back(std::move(latest));
  return out;
}

Result<std::unique_ptr<core::FileLock>> LockGuest(const std::string& replica_dir, const std::string& guest) {
  BLKREP_RETURN_IF_ERROR(ReplicaPath(replica_dir, guest, "x").status());
  core::FileSystem& fs = core::PosixFileSystemInstance();
  const std::string guest_dir = replica_dir + "/" + guest;
  BLKREP_RETURN_IF_ERROR(fs.CreateDirectories(guest_dir));
  Result<std::unique_ptr<core::FileLock>> lock = fs.Lock(guest_dir + "/" + kLockFileName);
  if (!lock.ok() && lock.status().code() == core::Code::kAborted) {
    return Status::Aborted("guest " + guest + " is being received by another session");
  }
  return lock;
}

Result<std::unique_ptr<PointInTimeVolume>> PointInTimeVolume::Open(const std::string& replica_dir,
                                                                   const std::string& guest,
                                                                   const std::string& volume,
                                                                   std::uint64_t point_id) {
  core::FileSystem& fs = core::PosixFileSystemInstance();
  BLKREP_ASSIGN_OR_RETURN(std::string replica_path, ReplicaPath(replica_dir, guest, volume));
  BLKREP_ASSIGN_OR_RETURN(GuestPoints g, LoadGuestPoints(fs, replica_dir, guest));
  std::unique_ptr<PointInTimeVolume> p(new PointInTimeVolume());
  p->name_ = volume;
  const std::string what = "guest " + guest + " volume " + volume + " point " + std::to_string(point_id);
  if (point_id == g.head.point_id) {
    const VolumeState* vs = g.state.Find(volume);
    if (vs == nullptr || vs->committed_epoch == 0) return Status::NotFound(what + ": no committed replica");
    if (vs->incomplete) return Status::Aborted(what + ": the replica is incomplete");
    p->size_bytes_ = vs->size_bytes;
    p->block_size_bytes_ = vs->block_size_bytes;
  } else {
    auto it = std::find_if(g.chain.begin(), g.chain.end(), [&](const UndoFile& f) { return f.id == point_id; });
    if (it == g.chain.end()) return Status::NotFound("guest " + guest + " has no recovery point " + std::to_string(point_id));
    std::optional<std::uint32_t> vi = VolumeIndex(it->meta, volume);
    if (!vi) return Status::NotFound(what + ": the point has no such volume");
    p->size_bytes_ = it->meta.volumes[*vi].size_bytes;
    p->block_size_bytes_ = it->meta.volumes[*vi].block_size_bytes;
    for (; it != g.chain.end(); ++it) {
      Source s;
      s.path = it->path;
      BLKREP_ASSIGN_OR_RETURN(s.file, fs.Open(s.path, core::OpenMode::kReadOnly));
      BLKREP_ASSIGN_OR_RETURN(std::uint64_t size, s.file->Size());
      if (size != it->size_bytes) return Status::Aborted(s.path + " changed while it was opened");
      s.meta = std::move(it->meta);
      if (std::optional<std::uint32_t> i = VolumeIndex(s.meta, volume)) {
        if (s.meta.volumes[*i].block_size_bytes != p->block_size_bytes_) {
          return Status::Corruption(s.path + ": undo file: volume " + volume + " has another block size");
        }
        s.extents = ExtentsOf(s.meta, *i);
      }
      p->sources_.push_back(std::move(s));
    }
  }
  BLKREP_ASSIGN_OR_RETURN(p->replica_, core::FileBlockDevice::Open(replica_path, {.read_only = true, .direct_io = false}));
  return p;
}

std::vector<BlockRange> PointInTimeVolume::ChangedBlocks() const {
  std::vector<BlockRange> all;
  for (const Source& s : sources_) {
    for (std::size_t i : s.extents) all.push_back({s.meta.extents[i].first_block, s.meta.extents[i].block_count});
  }
  std::sort(all.begin(), all.end(), [](const BlockRange& a, const BlockRange& b) { return a.first < b.first; });
  std::vector<BlockRange> merged;
  for (const BlockRange& r : all) {
    if (!merged.empty() && r.first <= merged.back().first + merged.back().count) {
      merged.back().count = std::max(merged.back().first + merged.back().count, r.first + r.count) - merged.back().first;
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

Status PointInTimeVolume::ReadBlock(std::uint64_t block, std::vector<std::byte>& buffer) {
  for (Source& s : sources_) {
    auto it = std::upper_bound(s.extents.begin(), s.extents.end(), block, [&](std::uint64_t b, std::size_t i) {
      return b < s.meta.extents[i].first_block;
    });
    if (it == s.extents.begin()) continue;
    const UndoExtent& e = s.meta.extents[*std::prev(it)];
    if (block >= e.first_block + e.block_count) continue;
    return ReadUndoBlock(*s.file, s.path, s.meta, e, block, buffer);
  }
  buffer.resize(RangeBytes(size_bytes_, block_size_bytes_, block, 1));
  return replica_->Read(block * block_size_bytes_, buffer);
}

Status PointInTimeVolume::Read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  if (offset_bytes > size_bytes_ || out.size() > size_bytes_ - offset_bytes) {
    return Status::OutOfRange("volume " + name_ + ": read of " + std::to_string(out.size()) + " bytes at " +
                              std::to_string(offset_bytes) + " is past its " + std::to_string(size_bytes_) + " bytes");
  }
  std::vector<std::byte> buffer;
  std::uint64_t done = 0;
  while (done < out.size()) {
    const std::uint64_t pos = offset_bytes + done;
    const std::uint64_t block = pos / block_size_bytes_;
    BLKREP_RETURN_IF_ERROR(ReadBlock(block, buffer));
    const std::uint64_t in_block = pos - block * block_size_bytes_;
    const std::uint64_t n = std::min<std::uint64_t>(buffer.size() - in_block, out.size() - done);
    std::copy_n(buffer.begin() + static_cast<std::ptrdiff_t>(in_block), n, out.begin() + static_cast<std::ptrdiff_t>(done));
    done += n;
  }
  return Status::Ok();
}

// ---- Rollback.

Status RollbackToPoint(const std::string& replica_dir, const std::string& guest, std::uint64_t point_id) {
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::FileLock> lock, LockGuest(replica_dir, guest));
  return RollbackToPointLocked(replica_dir, guest, point_id);
}

Status RollbackToPointLocked(const std::string& replica_dir, const std::string& guest, std::uint64_t point_id) {
  core::FileSystem& fs = core::PosixFileSystemInstance();
  const std::string guest_dir = replica_dir + "/" + guest;
  BLKREP_ASSIGN_OR_RETURN(GuestPoints g, LoadGuestPoints(fs, replica_dir, guest, /*allow_rollback_mark=*/true));
  const bool rerun = g.head.rollback_to != 0;
  if (rerun && g.head.rollback_to != point_id) {
    return Status::Aborted("a rollback of guest " + guest + " to point " + std::to_string(g.head.rollback_to) +
                           " did not finish; run it again with that point");
  }
  if (!rerun && point_id == g.head.point_id && g.has_head) return Status::Ok();  // the replica is that point
  auto at = std::find_if(g.chain.begin(), g.chain.end(), [&](const UndoFile& f) { return f.id == point_id; });
  if (at == g.chain.end()) return Status::NotFound("guest " + guest + " has no recovery point " + std::to_string(point_id));
  const UndoMeta& target = at->meta;
  if (!rerun) {
    for (const PointVolume& pv : target.volumes) {
      const VolumeState* vs = g.state.Find(pv.name);
      if (vs == nullptr || vs->incomplete) {
        return Status::Aborted("replica of volume " + pv.name + " of guest " + guest + " is incomplete");
      }
    }
  }
  // 1. The mark: from here on the points are unusable until the rollback
  // finishes, and a session drops them.
  PointsHead head = g.head;
  head.rollback_to = point_id;
  BLKREP_RETURN_IF_ERROR(WriteHead(fs, guest_dir, head));
  // 2. The replicas hold no epoch while they are rewritten.
  GuestState state = g.state;
  std::vector<std::string> stagings;
  for (VolumeState& vs : state.volumes) {
    if (VolumeIndex(target, vs.name)) vs.incomplete = true;
    if (vs.staging.staging_id != 0) stagings.push_back(vs.name);
    vs.staging = StagingInfo{};
    vs.in_cycle = false;
    vs.cycle_epoch = vs.cycle_block_count = 0;
    vs.data_blocks = vs.zero_blocks = vs.kept_blocks = 0;
  }
  state.cycle_id = 0;
  state.mode = 0;
  BLKREP_RETURN_IF_ERROR(WriteGuestStateFile(fs, guest_dir, state));
  for (const std::string& name : stagings) {
    (void)fs.Remove(guest_dir + "/" + kStagingDirName + "/" + name + ".index");
    (void)fs.Remove(guest_dir + "/" + kStagingDirName + "/" + name + ".data");
  }
  // 3. Newest to oldest: each block ends with the contents of the oldest
  // undo file at or after the point that holds it. A redo gives the same.
  std::vector<std::unique_ptr<core::FileBlockDevice>> replicas(target.volumes.size());
  for (std::size_t i = 0; i < target.volumes.size(); ++i) {
    BLKREP_ASSIGN_OR_RETURN(std::string path, ReplicaPath(replica_dir, guest, target.volumes[i].name));
    BLKREP_ASSIGN_OR_RETURN(replicas[i], core::FileBlockDevice::Open(path, {.read_only = false, .direct_io = false}));
  }
  std::vector<std::byte> block;
  for (auto it = g.chain.rbegin(); it != g.chain.rend(); ++it) {
    BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file, fs.Open(it->path, core::OpenMode::kReadOnly));
    for (const UndoExtent& e : it->meta.extents) {
      std::optional<std::uint32_t> ti = VolumeIndex(target, it->meta.volumes[e.volume].name);
      if (!ti) continue;
      for (std::uint64_t b = e.first_block; b < e.first_block + e.block_count; ++b) {
        BLKREP_RETURN_IF_ERROR(ReadUndoBlock(*file, it->path, it->meta, e, b, block));
        BLKREP_RETURN_IF_ERROR(replicas[*ti]->Write(b * target.volumes[*ti].block_size_bytes, block));
      }
    }
    if (it->id == point_id) break;
  }
  GuestState done = state;
  for (std::size_t i = 0; i < target.volumes.size(); ++i) {
    const PointVolume& pv = target.volumes[i];
    struct stat st{};
    if (::fstat(replicas[i]->fd(), &st) != 0) return core::ErrnoStatus(errno, "fstat replica of " + pv.name);
    if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) != pv.size_bytes) {
      if (::ftruncate(replicas[i]->fd(), static_cast<off_t>(pv.size_bytes)) != 0) {
        return core::ErrnoStatus(errno, "truncate replica of " + pv.name);
      }
    }
    BLKREP_RETURN_IF_ERROR(replicas[i]->Flush());
    if (::fstat(replicas[i]->fd(), &st) != 0) return core::ErrnoStatus(errno, "fstat replica of " + pv.name);
    VolumeState* vs = done.Find(pv.name);
    if (vs == nullptr) return Status::NotFound("guest " + guest + " has no volume " + pv.name + " any more");
    vs->committed_epoch = pv.epoch;
    vs->incomplete = false;
    vs->size_bytes = pv.size_bytes;
    vs->block_size_bytes = pv.block_size_bytes;
    vs->replica = ReplicaIdentityOf(st);
  }
  // 4. The state commits the point, then the head names it.
  BLKREP_RETURN_IF_ERROR(WriteGuestStateFile(fs, guest_dir, done));
  head.point_id = point_id;
  head.commit_time = target.commit_time;
  head.attempt = 0;
  head.rollback_to = 0;
  BLKREP_RETURN_IF_ERROR(WriteHead(fs, guest_dir, head));
  // 5. The newer points are garbage now.
  return RemoveUndoFiles(fs, guest_dir, [&](std::uint64_t id) { return id >= point_id; });
}

}  // namespace blkrep::receiver
