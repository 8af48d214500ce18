// FileBlockDevice implementation. See file_block_device.h for the design.
//
// Every system call failure becomes a Status once, where the call is made;
// the fallback chains (fallocate -> BLKZEROOUT -> writing zeroes) inspect
// Status::error_number() to decide whether the next method may help.
#include "core/file_block_device.h"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>

namespace blkrep::core {
namespace {

// One pread/pwrite moves at most this much; larger requests loop.
constexpr std::size_t kMaxTransferBytes = std::size_t{1} << 30;
// Size of the zero buffer used when zeroes have to be written.
constexpr std::size_t kZeroBufferBytes = std::size_t{1} << 20;
// Consecutive EINTR/EAGAIN without progress before we give up.
constexpr int kMaxConsecutiveRetries = 1000;
// The sysfs stat file's 7th field counts sectors of this size, whatever the
// device's logical block size (Documentation/block/stat.rst).
constexpr int kSysfsWriteSectorsField = 6;  // zero-based
constexpr std::size_t kSmallFileMaxBytes = 4096;

// Owns a descriptor until released.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

bool IsAligned(std::uint64_t value, std::uint64_t alignment) {
  return value % alignment == 0;
}

// Whether a zeroing method failed because it is unavailable here (so the
// next method in the chain may work), as opposed to a real I/O error.
bool IsUnsupportedError(int error_number) {
  switch (error_number) {
    case EOPNOTSUPP:
    case ENOSYS:
    case ENOTTY:
    case EINVAL:
    case ENODEV:
      return true;
    default:
      return false;
  }
}

std::string RangeText(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  return "offset " + std::to_string(offset_bytes) + " length " +
         std::to_string(length_bytes);
}

// Reads a small pseudo-file (sysfs, procfs) whole.
Result<std::string> ReadSmallFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, "open " + path);
  std::string text(kSmallFileMaxBytes, '\0');
  std::size_t filled = 0;
  while (filled < text.size()) {
    ssize_t n = ::read(fd.get(), text.data() + filled, text.size() - filled);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read " + path);
    }
    if (n == 0) break;
    filled += static_cast<std::size_t>(n);
  }
  text.resize(filled);
  return text;
}

// The `index`th (zero-based) whitespace-separated unsigned number of `text`.
Result<std::uint64_t> NthNumber(std::string_view text, int index) {
  int current = 0;
  std::size_t pos = 0;
  while (true) {
    pos = text.find_first_not_of(" \t\n", pos);
    if (pos == std::string_view::npos) break;
    std::size_t end = text.find_first_of(" \t\n", pos);
    if (end == std::string_view::npos) end = text.size();
    if (current == index) {
      std::uint64_t value = 0;
      auto [ptr, ec] =
          std::from_chars(text.data() + pos, text.data() + end, value);
      if (ec != std::errc() || ptr != text.data() + end) break;
      return value;
    }
    ++current;
    pos = end;
  }
  return Status::Corruption("no number at field " + std::to_string(index + 1));
}

Result<std::uint64_t> QuerySizeBytes(int fd, const struct stat& st,
                                     const std::string& path) {
  if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
  std::uint64_t size_bytes = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size_bytes) != 0) {
    return ErrnoStatus(errno, "BLKGETSIZE64 " + path);
  }
  return size_bytes;
}

// Fills the probe fields of `identity` from libblkid. A failed or
// inconclusive probe leaves them empty.
void ProbeContent(int fd, VolumeIdentity& identity) {
  blkid_probe probe = blkid_new_probe();
  if (probe == nullptr) return;
  if (blkid_probe_set_device(probe, fd, 0, 0) == 0) {
    blkid_probe_enable_superblocks(probe, 1);
    blkid_probe_set_superblocks_flags(probe,
                                      BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID);
    blkid_probe_enable_partitions(probe, 1);
    if (blkid_do_safeprobe(probe) == 0) {
      auto lookup = [probe](const char* name) {
        const char* data = nullptr;
        std::size_t length = 0;
        if (blkid_probe_lookup_value(probe, name, &data, &length) != 0 ||
            data == nullptr) {
          return std::string();
        }
        // libblkid counts the terminating NUL in length.
        return std::string(data, strnlen(data, length));
      };
      identity.probe_type = lookup("TYPE");
      if (identity.probe_type.empty()) identity.probe_type = lookup("PTTYPE");
      identity.uuid = lookup("UUID");
      identity.ptuuid = lookup("PTUUID");
    }
  }
  blkid_free_probe(probe);
}

}  // namespace

Result<std::unique_ptr<FileBlockDevice>> FileBlockDevice::Open(
    const std::string& path, const FileBlockDeviceOptions& options) {
  const int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  UniqueFd fd(::open(path.c_str(), flags));
  if (fd.get() < 0) return ErrnoStatus(errno, "open " + path);

  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "fstat " + path);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return Status::InvalidArgument(path +
                                   ": not a regular file or block device");
  }
  const bool is_block_device = S_ISBLK(st.st_mode);
  BLKREP_ASSIGN_OR_RETURN(std::uint64_t size_bytes,
                          QuerySizeBytes(fd.get(), st, path));

  std::uint32_t logical_block_size_bytes = 512;
  if (is_block_device) {
    int sector_size = 0;
    if (::ioctl(fd.get(), BLKSSZGET, &sector_size) != 0) {
      return ErrnoStatus(errno, "BLKSSZGET " + path);
    }
    if (sector_size > 0) {
      logical_block_size_bytes = static_cast<std::uint32_t>(sector_size);
    }
  }

  UniqueFd direct_fd(options.direct_io ? ::open(path.c_str(), flags | O_DIRECT)
                                       : -1);
  if (options.direct_io && direct_fd.get() < 0 && errno != EINVAL) {
    return ErrnoStatus(errno, "open O_DIRECT " + path);
  }
  // EINVAL: the filesystem has no O_DIRECT; stay buffered.
  if (direct_fd.get() >= 0) {
    struct stat direct_st {};
    if (::fstat(direct_fd.get(), &direct_st) != 0) {
      return ErrnoStatus(errno, "fstat " + path);
    }
    // Two opens of one path: make sure both name the same object.
    if (direct_st.st_dev != st.st_dev || direct_st.st_ino != st.st_ino) {
      return Status::Aborted(path + ": replaced while being opened");
    }
  }

  return std::unique_ptr<FileBlockDevice>(new FileBlockDevice(
      path, fd.release(), direct_fd.release(), options.read_only,
      is_block_device, size_bytes, logical_block_size_bytes));
}

FileBlockDevice::FileBlockDevice(std::string path, int fd, int direct_fd,
                                 bool read_only, bool is_block_device,
                                 std::uint64_t size_bytes,
                                 std::uint32_t logical_block_size_bytes)
    : path_(std::move(path)),
      fd_(fd),
      direct_fd_(direct_fd),
      read_only_(read_only),
      is_block_device_(is_block_device),
      size_bytes_(size_bytes),
      logical_block_size_bytes_(logical_block_size_bytes) {}

FileBlockDevice::~FileBlockDevice() {
  if (direct_fd_ >= 0) ::close(direct_fd_);
  ::close(fd_);
}

Status FileBlockDevice::Transfer(Direction direction,
                                 std::uint64_t offset_bytes, std::byte* buffer,
                                 std::size_t length_bytes) {
  const bool reading = direction == Direction::kRead;
  std::size_t done = 0;
  int retries = 0;
  bool direct_refused = false;
  while (done < length_bytes) {
    const std::uint64_t position = offset_bytes + done;
    std::byte* cursor = buffer + done;
    std::size_t chunk = std::min(length_bytes - done, kMaxTransferBytes);
    int fd = fd_;
    if (direct_fd_ >= 0 && !direct_refused &&
        IsAligned(position, kDirectIoAlignmentBytes) &&
        IsAligned(reinterpret_cast<std::uintptr_t>(cursor),
                  kDirectIoAlignmentBytes)) {
      // Send the aligned prefix direct; an unaligned tail goes buffered on
      // the next iteration.
      const std::size_t aligned_chunk = chunk - chunk % kDirectIoAlignmentBytes;
      if (aligned_chunk > 0) {
        fd = direct_fd_;
        chunk = aligned_chunk;
      }
    }
    const ssize_t n =
        reading ? ::pread(fd, cursor, chunk, static_cast<off_t>(position))
                : ::pwrite(fd, cursor, chunk, static_cast<off_t>(position));
    if (n < 0) {
      const int error_number = errno;
      if ((error_number == EINTR || error_number == EAGAIN) &&
          ++retries < kMaxConsecutiveRetries) {
        continue;
      }
      if (error_number == EINVAL && fd == direct_fd_) {
        // The device wants a larger alignment than ours: go buffered.
        direct_refused = true;
        continue;
      }
      return ErrnoStatus(error_number,
                         std::string(reading ? "read " : "write ") + path_ +
                             " at " + RangeText(position, chunk));
    }
    if (n == 0) {
      return Status::IoError(path_ + ": " + (reading ? "read" : "write") +
                             " made no progress at offset " +
                             std::to_string(position) +
                             (reading ? " (file shrank?)" : ""));
    }
    retries = 0;
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

Status FileBlockDevice::CheckWritable() const {
  if (read_only_) return Status::IoError(path_ + ": opened read-only", EROFS);
  return Status::Ok();
}

Status FileBlockDevice::Read(std::uint64_t offset_bytes,
                             std::span<std::byte> out) {
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, out.size(), size_bytes_, path_));
  return Transfer(Direction::kRead, offset_bytes, out.data(), out.size());
}

Status FileBlockDevice::Write(std::uint64_t offset_bytes,
                              std::span<const std::byte> data) {
  BLKREP_RETURN_IF_ERROR(CheckWritable());
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, data.size(), size_bytes_, path_));
  // pwrite does not write through the pointer; Transfer is shared with reads.
  return Transfer(Direction::kWrite, offset_bytes,
                  const_cast<std::byte*>(data.data()), data.size());
}

Status FileBlockDevice::Flush() {
  while (::fdatasync(fd_) != 0) {
    if (errno != EINTR) return ErrnoStatus(errno, "fdatasync " + path_);
  }
  return Status::Ok();
}

Status FileBlockDevice::Trim(std::uint64_t offset_bytes,
                             std::uint64_t length_bytes) {
  BLKREP_RETURN_IF_ERROR(CheckWritable());
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, length_bytes, size_bytes_, path_));
  if (length_bytes == 0) return Status::Ok();
  return ZeroRange(offset_bytes, length_bytes, /*allow_unmap=*/true);
}

Status FileBlockDevice::WriteZeroes(std::uint64_t offset_bytes,
                                    std::uint64_t length_bytes,
                                    bool allow_unmap) {
  BLKREP_RETURN_IF_ERROR(CheckWritable());
  BLKREP_RETURN_IF_ERROR(
      CheckRange(offset_bytes, length_bytes, size_bytes_, path_));
  if (length_bytes == 0) return Status::Ok();
  return ZeroRange(offset_bytes, length_bytes, allow_unmap);
}

Status FileBlockDevice::ZeroRange(std::uint64_t offset_bytes,
                                  std::uint64_t length_bytes,
                                  bool allow_unmap) {
  return is_block_device_
             ? ZeroBlockDeviceRange(offset_bytes, length_bytes, allow_unmap)
             : ZeroFileRange(offset_bytes, length_bytes, allow_unmap);
}

Status FileBlockDevice::ZeroFileRange(std::uint64_t offset_bytes,
                                      std::uint64_t length_bytes,
                                      bool allow_unmap) {
  const auto offset = static_cast<off_t>(offset_bytes);
  const auto length = static_cast<off_t>(length_bytes);
  auto try_fallocate = [&](int mode, const char* what) {
    while (::fallocate(fd_, mode, offset, length) != 0) {
      if (errno != EINTR) {
        return ErrnoStatus(errno, std::string(what) + " " + path_ + " at " +
                                      RangeText(offset_bytes, length_bytes));
      }
    }
    return Status::Ok();
  };
  if (allow_unmap) {
    Status status =
        try_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "punch hole");
    if (status.ok() || !IsUnsupportedError(status.error_number()))
      return status;
  }
  Status status =
      try_fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "zero range");
  if (status.ok() || !IsUnsupportedError(status.error_number())) return status;
  return WriteZeroBytes(offset_bytes, length_bytes);
}

Status FileBlockDevice::ZeroBlockDeviceRange(std::uint64_t offset_bytes,
                                             std::uint64_t length_bytes,
                                             bool allow_unmap) {
  // The kernel zeroes whole logical blocks only; a partial head and tail
  // are written as zeroes.
  const std::uint64_t block = logical_block_size_bytes_;
  const std::uint64_t end = offset_bytes + length_bytes;
  const std::uint64_t middle_begin =
      std::min(end, (offset_bytes + block - 1) / block * block);
  const std::uint64_t middle_end = std::max(middle_begin, end / block * block);
  if (middle_begin > offset_bytes) {
    BLKREP_RETURN_IF_ERROR(
        WriteZeroBytes(offset_bytes, middle_begin - offset_bytes));
  }
  if (end > middle_end) {
    BLKREP_RETURN_IF_ERROR(WriteZeroBytes(middle_end, end - middle_end));
  }
  if (middle_end == middle_begin) return Status::Ok();
  const std::uint64_t middle_length = middle_end - middle_begin;

  if (allow_unmap) {
    // On a block device this zeroes, unmapping where the device can do so
    // and guarantee zeroes (BLKDEV_ZERO_NOFALLBACK).
    int rc;
    do {
      rc = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       static_cast<off_t>(middle_begin),
                       static_cast<off_t>(middle_length));
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return Status::Ok();
    Status status =
        ErrnoStatus(errno, "punch hole " + path_ + " at " +
                               RangeText(middle_begin, middle_length));
    if (!IsUnsupportedError(status.error_number())) return status;
  }
  std::uint64_t range[2] = {middle_begin, middle_length};
  if (::ioctl(fd_, BLKZEROOUT, range) == 0) return Status::Ok();
  Status status =
      ErrnoStatus(errno, "BLKZEROOUT " + path_ + " at " +
                             RangeText(middle_begin, middle_length));
  if (!IsUnsupportedError(status.error_number())) return status;
  return WriteZeroBytes(middle_begin, middle_length);
}

Status FileBlockDevice::WriteZeroBytes(std::uint64_t offset_bytes,
                                       std::uint64_t length_bytes) {
  const std::size_t buffer_bytes = static_cast<std::size_t>(
      std::min<std::uint64_t>(length_bytes, kZeroBufferBytes));
  // Aligned so that the aligned parts of the range can go through O_DIRECT.
  const std::size_t allocation_bytes =
      (buffer_bytes + kDirectIoAlignmentBytes - 1) / kDirectIoAlignmentBytes *
      kDirectIoAlignmentBytes;
  std::unique_ptr<std::byte, decltype(&std::free)> zeroes(
      static_cast<std::byte*>(
          std::aligned_alloc(kDirectIoAlignmentBytes, allocation_bytes)),
      &std::free);
  if (zeroes == nullptr) {
    return Status::ResourceExhausted("no memory for a zero buffer");
  }
  std::memset(zeroes.get(), 0, allocation_bytes);
  std::uint64_t done = 0;
  while (done < length_bytes) {
    const std::size_t chunk = static_cast<std::size_t>(
        std::min<std::uint64_t>(length_bytes - done, buffer_bytes));
    BLKREP_RETURN_IF_ERROR(
        Transfer(Direction::kWrite, offset_bytes + done, zeroes.get(), chunk));
    done += chunk;
  }
  return Status::Ok();
}

Result<VolumeIdentity> FileBlockDevice::Identity() {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) return ErrnoStatus(errno, "fstat " + path_);
  VolumeIdentity identity;
  identity.kind = is_block_device_ ? VolumeIdentity::Kind::kBlockDevice
                                   : VolumeIdentity::Kind::kRegularFile;
  BLKREP_ASSIGN_OR_RETURN(identity.size_bytes, QuerySizeBytes(fd_, st, path_));
  identity.dev = st.st_dev;
  identity.ino = st.st_ino;
  identity.rdev = st.st_rdev;
  identity.mtime_ns =
      static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
      st.st_mtim.tv_nsec;
  {
    std::lock_guard<std::mutex> lock(probe_mutex_);
    ProbeContent(fd_, identity);
  }
  if (is_block_device_) {
    const std::string stat_path = "/sys/dev/block/" +
                                  std::to_string(major(st.st_rdev)) + ":" +
                                  std::to_string(minor(st.st_rdev)) + "/stat";
    Result<std::string> stat_text = ReadSmallFile(stat_path);
    if (stat_text.ok()) {
      Result<std::uint64_t> sectors =
          NthNumber(*stat_text, kSysfsWriteSectorsField);
      if (sectors.ok()) identity.sectors_written = *sectors;
    }
    Result<std::string> boot_id =
        ReadSmallFile("/proc/sys/kernel/random/boot_id");
    if (boot_id.ok()) {
      std::string& text = *boot_id;
      while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.pop_back();
      }
      identity.boot_id = std::move(text);
    }
  }
  return identity;
}

}  // namespace blkrep::core
