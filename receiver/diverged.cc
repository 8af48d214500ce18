#include "receiver/diverged.h"

#include <algorithm>

#include "core/bytes.h"
#include "core/hash.h"

namespace blkrep::receiver {

using core::Result;
using core::Status;

namespace {

constexpr std::uint32_t kDivergedMagic = 0x44524B42;  // "BKRD"
constexpr std::uint32_t kDivergedVersion = 1;
constexpr std::uint64_t kHeaderBytes = 32;
// A volume of 2^60 bytes in 4 KiB blocks has 2^48 blocks; a file of more
// ranges than that could hold is not read.
constexpr std::uint64_t kMaxRanges = std::uint64_t{1} << 26;

Status Bad(const std::string& what) { return Status::Corruption("diverged blocks file: " + what); }

}  // namespace

std::string DivergedPath(const std::string& guest_dir, const std::string& volume) {
  return guest_dir + "/" + volume + ".diverged";
}

std::vector<std::byte> EncodeDiverged(const DivergedBlocks& d) {
  std::vector<std::byte> out;
  core::ByteWriter w(out);
  w.U32(kDivergedMagic);
  w.U32(kDivergedVersion);
  w.U32(d.block_size_bytes);
  w.U32(0);
  w.U64(d.block_count);
  w.U64(d.ranges.size());
  for (const auto& [first, count] : d.ranges) {
    w.U64(first);
    w.U64(count);
  }
  w.U64(core::Xxh3_64(out));
  return out;
}

Result<DivergedBlocks> DecodeDiverged(std::span<const std::byte> bytes) {
  if (bytes.size() < kHeaderBytes + 8) return Bad(std::to_string(bytes.size()) + " bytes is too short");
  std::span<const std::byte> body = bytes.first(bytes.size() - 8);
  core::ByteReader tail(bytes.subspan(bytes.size() - 8));
  if (tail.U64() != core::Xxh3_64(body)) return Bad("checksum mismatch");
  core::ByteReader r(body);
  if (r.U32() != kDivergedMagic) return Bad("bad magic");
  std::uint32_t version = r.U32();
  if (version != kDivergedVersion) return Bad("version " + std::to_string(version) + " (1 is read)");
  DivergedBlocks d;
  d.block_size_bytes = r.U32();
  if (d.block_size_bytes < 4096 || d.block_size_bytes > (1U << 20) || (d.block_size_bytes & (d.block_size_bytes - 1))) {
    return Bad("block_size_bytes " + std::to_string(d.block_size_bytes) + " is no power of two in [4096, 1 MiB]");
  }
  if (r.U32() != 0) return Bad("reserved bytes are not 0");
  d.block_count = r.U64();
  if (d.block_count == 0 || d.block_count > (std::uint64_t{1} << 60) / d.block_size_bytes) {
    return Bad("block_count " + std::to_string(d.block_count) + " out of range");
  }
  std::uint64_t n = r.U64();
  if (n > kMaxRanges || n * 16 != r.remaining()) {
    return Bad("range_count " + std::to_string(n) + " does not match the file's " + std::to_string(r.remaining()) +
               " bytes of ranges");
  }
  std::uint64_t end = 0;
  d.ranges.reserve(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    std::uint64_t first = r.U64(), count = r.U64();
    if (count == 0 || first < end || first >= d.block_count || count > d.block_count - first) {
      return Bad("range " + std::to_string(i) + " [" + std::to_string(first) + ", " + std::to_string(count) +
                 "] is empty, out of order or past block " + std::to_string(d.block_count));
    }
    end = first + count;
    d.ranges.emplace_back(first, count);
  }
  return d;
}

Result<DivergedBlocks> ReadDiverged(core::FileSystem& fs, const std::string& guest_dir, const std::string& volume) {
  std::string path = DivergedPath(guest_dir, volume);
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(path));
  if (!exists) return Status::NotFound("no " + path);
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file, fs.Open(path, core::OpenMode::kReadOnly));
  BLKREP_ASSIGN_OR_RETURN(std::uint64_t size, file->Size());
  if (size > kHeaderBytes + 8 + kMaxRanges * 16) return Bad(path + ": " + std::to_string(size) + " bytes is too large");
  std::vector<std::byte> bytes(size);
  BLKREP_ASSIGN_OR_RETURN(std::size_t got, file->ReadAt(0, bytes));
  if (got != size) return Status::IoError(path + ": short read");
  Result<DivergedBlocks> d = DecodeDiverged(bytes);
  if (!d.ok()) return Status::Corruption(path + ": " + d.status().message());
  return d;
}

Status WriteDiverged(core::FileSystem& fs, const std::string& guest_dir, const std::string& volume,
                     const DivergedBlocks& d) {
  std::string path = DivergedPath(guest_dir, volume);
  std::string tmp = path + ".tmp";
  std::vector<std::byte> bytes = EncodeDiverged(d);
  {
    BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<core::File> file, fs.Open(tmp, core::OpenMode::kCreateTruncate));
    BLKREP_RETURN_IF_ERROR(file->WriteAt(0, bytes));
    BLKREP_RETURN_IF_ERROR(file->Sync());
  }
  BLKREP_RETURN_IF_ERROR(fs.Rename(tmp, path));
  return fs.SyncDir(guest_dir);
}

Status RemoveDiverged(core::FileSystem& fs, const std::string& guest_dir, const std::string& volume) {
  std::string path = DivergedPath(guest_dir, volume);
  BLKREP_ASSIGN_OR_RETURN(bool exists, fs.Exists(path));
  if (!exists) return Status::Ok();
  BLKREP_RETURN_IF_ERROR(fs.Remove(path));
  return fs.SyncDir(guest_dir);
}

BlockRanges CoarsenRanges(const BlockRanges& ranges, std::size_t max_ranges) {
  if (ranges.size() <= max_ranges || max_ranges == 0) return ranges;
  // Fill the gaps up to the largest gap length that must go.
  std::vector<std::uint64_t> gaps;
  gaps.reserve(ranges.size() - 1);
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    gaps.push_back(ranges[i].first - (ranges[i - 1].first + ranges[i - 1].second));
  }
  std::size_t to_fill = ranges.size() - max_ranges;
  std::nth_element(gaps.begin(), gaps.begin() + static_cast<std::ptrdiff_t>(to_fill - 1), gaps.end());
  std::uint64_t threshold = gaps[to_fill - 1];
  BlockRanges out;
  for (const auto& r : ranges) {
    if (!out.empty() && r.first - (out.back().first + out.back().second) <= threshold) {
      out.back().second = r.first + r.second - out.back().first;
      continue;
    }
    out.push_back(r);
  }
  return out;
}

}  // namespace blkrep::receiver
