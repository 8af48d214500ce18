#include "tracker/cow_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace blkrep::tracker {

using core::Result;
using core::Status;

namespace {
constexpr char kMagic[8] = {'B', 'K', 'R', 'C', 'O', 'W', '0', '1'};
constexpr std::uint64_t kHeaderBytes = 4096;
constexpr std::uint64_t kPage = 4096;
enum OverflowReason : std::uint32_t { kNone = 0, kCap = 1, kIo = 2, kAbandoned = 3 };

std::uint64_t RoundUp(std::uint64_t v, std::uint64_t to) { return (v + to - 1) / to * to; }
}  // namespace

struct CowStore::Header {
  char magic[8];
  std::uint32_t version;
  std::uint32_t block_size_bytes;
  std::uint64_t volume_size_bytes;
  std::uint64_t block_count;
  std::uint64_t epoch;
  std::uint64_t cap_blocks;
  std::uint64_t frozen_offset;   // bytes from the start of the file
  std::uint64_t shipped_offset;
  std::uint64_t index_offset;
  std::uint64_t data_offset;     // also the size of the mapping
  std::atomic<std::uint64_t> used_slots;
  std::atomic<std::uint32_t> overflow;
};
static_assert(sizeof(CowStore::Header) <= kHeaderBytes);

std::string CowStorePath(const std::string& state_dir, const std::string& guest, const std::string& job,
                         const std::string& name) {
  return state_dir + "/cow/" + guest + "/" + job + "/" + name + ".cow";
}

CowStore::CowStore(std::string path, int fd, void* map, std::size_t map_bytes)
    : path_(std::move(path)), fd_(fd), map_(map), map_bytes_(map_bytes), header_(static_cast<Header*>(map)) {}

CowStore::~CowStore() {
  if (map_) ::munmap(map_, map_bytes_);
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<CowStore>> CowStore::Create(const std::string& path, std::uint32_t block_size_bytes,
                                                   std::uint64_t volume_size_bytes, std::uint64_t epoch,
                                                   const DirtyBitmap& frozen, std::uint64_t cap_bytes) {
  std::uint64_t blocks = (volume_size_bytes + block_size_bytes - 1) / block_size_bytes;
  if (frozen.block_count() != blocks) return Status::Internal("frozen bitmap does not match the volume");
  std::uint64_t words_bytes = (blocks + 63) / 64 * 8;
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = 1;
  h.block_size_bytes = block_size_bytes;
  h.volume_size_bytes = volume_size_bytes;
  h.block_count = blocks;
  h.epoch = epoch;
  h.cap_blocks = cap_bytes / block_size_bytes;
  h.frozen_offset = kHeaderBytes;
  h.shipped_offset = RoundUp(h.frozen_offset + words_bytes, kPage);
  h.index_offset = RoundUp(h.shipped_offset + words_bytes, kPage);
  h.data_offset = RoundUp(h.index_offset + blocks * 4, kPage);
  ::unlink(path.c_str());
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return core::ErrnoStatus(errno, "create copy-on-write store " + path);
  if (::ftruncate(fd, static_cast<off_t>(h.data_offset)) != 0) {
    Status s = core::ErrnoStatus(errno, "size copy-on-write store " + path);
    ::close(fd);
    ::unlink(path.c_str());
    return s;
  }
  void* map = ::mmap(nullptr, h.data_offset, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    Status s = core::ErrnoStatus(errno, "map copy-on-write store " + path);
    ::close(fd);
    ::unlink(path.c_str());
    return s;
  }
  auto* header = static_cast<Header*>(map);
  std::memcpy(static_cast<void*>(header), &h, offsetof(Header, used_slots));
  header->used_slots.store(0);
  header->overflow.store(kNone);
  std::memcpy(static_cast<char*>(map) + h.frozen_offset, frozen.words().data(), frozen.words().size() * 8);
  return std::unique_ptr<CowStore>(new CowStore(path, fd, map, h.data_offset));
}

Result<std::unique_ptr<CowStore>> CowStore::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return core::ErrnoStatus(errno, "open copy-on-write store " + path);
  struct stat st{};
  Header h{};
  auto fail = [&](const std::string& why) -> Status {
    ::close(fd);
    return Status::Corruption("copy-on-write store " + path + ": " + why);
  };
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return fail("not a regular file");
  if (::pread(fd, &h, offsetof(Header, used_slots), 0) != static_cast<ssize_t>(offsetof(Header, used_slots))) {
    return fail("short header");
  }
  std::uint64_t bs = h.block_size_bytes;
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0 || h.version != 1) return fail("bad magic");
  if (bs < 512 || bs > (64U << 20) || h.volume_size_bytes == 0 || h.volume_size_bytes > (1ULL << 60)) {
    return fail("bad geometry");
  }
  std::uint64_t blocks = (h.volume_size_bytes + bs - 1) / bs;
  std::uint64_t words_bytes = (blocks + 63) / 64 * 8;
  if (h.block_count != blocks || h.frozen_offset != kHeaderBytes ||
      h.shipped_offset != RoundUp(h.frozen_offset + words_bytes, kPage) ||
      h.index_offset != RoundUp(h.shipped_offset + words_bytes, kPage) ||
      h.data_offset != RoundUp(h.index_offset + blocks * 4, kPage) ||
      static_cast<std::uint64_t>(st.st_size) < h.data_offset) {
    return fail("layout does not match its geometry");
  }
  void* map = ::mmap(nullptr, h.data_offset, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    Status s = core::ErrnoStatus(errno, "map copy-on-write store " + path);
    ::close(fd);
    return s;
  }
  return std::unique_ptr<CowStore>(new CowStore(path, fd, map, h.data_offset));
}

std::atomic<std::uint64_t>* CowStore::FrozenWords() const {
  return reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<char*>(map_) + header_->frozen_offset);
}
std::atomic<std::uint64_t>* CowStore::ShippedWords() const {
  return reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<char*>(map_) + header_->shipped_offset);
}
std::atomic<std::uint32_t>* CowStore::Index() const {
  return reinterpret_cast<std::atomic<std::uint32_t>*>(static_cast<char*>(map_) + header_->index_offset);
}

bool CowStore::frozen(std::uint64_t block) const {
  return (FrozenWords()[block >> 6].load(std::memory_order_relaxed) >> (block & 63)) & 1U;
}

void CowStore::SetOverflow(std::uint32_t reason) {
  std::uint32_t expected = kNone;
  header_->overflow.compare_exchange_strong(expected, reason);
}

void CowStore::Preserve(int volume_fd, std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  if (length_bytes == 0 || overflowed()) return;
  const std::uint64_t bs = header_->block_size_bytes;
  const std::uint64_t first = offset_bytes / bs;
  const std::uint64_t end = std::min(header_->block_count, (offset_bytes + length_bytes + bs - 1) / bs);
  std::atomic<std::uint32_t>* index = Index();
  std::atomic<std::uint64_t>* shipped = ShippedWords();
  std::vector<std::byte> buffer;
  for (std::uint64_t b = first; b < end; ++b) {
    if (!frozen(b)) continue;
    if ((shipped[b >> 6].load(std::memory_order_acquire) >> (b & 63)) & 1U) continue;
    if (index[b].load(std::memory_order_acquire) != 0) continue;
    std::lock_guard lock(preserve_mu_);
    if (index[b].load(std::memory_order_acquire) != 0) continue;  // another writer did it
    std::uint64_t slot = header_->used_slots.load();
    if (slot >= header_->cap_blocks || slot >= 0xFFFFFFFEULL) {
      SetOverflow(kCap);
      return;
    }
    std::uint64_t length = std::min(bs, header_->volume_size_bytes - b * bs);
    buffer.resize(length);
    ssize_t got = ::pread(volume_fd, buffer.data(), length, static_cast<off_t>(b * bs));
    if (got < 0) {
      SetOverflow(kIo);
      return;
    }
    if (static_cast<std::uint64_t>(got) < length) std::memset(buffer.data() + got, 0, length - got);
    off_t at = static_cast<off_t>(header_->data_offset + slot * bs);
    if (::pwrite(fd_, buffer.data(), length, at) != static_cast<ssize_t>(length)) {
      SetOverflow(kIo);
      return;
    }
    header_->used_slots.store(slot + 1);
    index[b].store(static_cast<std::uint32_t>(slot + 1), std::memory_order_release);
  }
}

Result<bool> CowStore::ReadPreserved(std::uint64_t block, std::span<std::byte> out) const {
  if (block >= header_->block_count) return Status::OutOfRange("block past the copy-on-write store");
  std::uint32_t entry = Index()[block].load(std::memory_order_acquire);
  if (entry == 0) return false;
  std::uint64_t slot = entry - 1;
  if (slot >= header_->used_slots.load()) return Status::Corruption("copy-on-write store " + path_ + ": bad slot");
  off_t at = static_cast<off_t>(header_->data_offset + slot * header_->block_size_bytes);
  ssize_t got = ::pread(fd_, out.data(), out.size(), at);
  if (got != static_cast<ssize_t>(out.size())) {
    return got < 0 ? core::ErrnoStatus(errno, "read copy-on-write store " + path_)
                   : Status::IoError("short read of copy-on-write store " + path_);
  }
  return true;
}

void CowStore::MarkShipped(std::uint64_t first_block, std::uint64_t count_blocks) {
  std::atomic<std::uint64_t>* shipped = ShippedWords();
  std::uint64_t end = std::min(header_->block_count, first_block + count_blocks);
  for (std::uint64_t b = first_block; b < end; ++b) {
    shipped[b >> 6].fetch_or(std::uint64_t{1} << (b & 63), std::memory_order_release);
  }
}

bool CowStore::overflowed() const { return header_->overflow.load() != kNone; }

void CowStore::Abandon() { SetOverflow(kAbandoned); }

core::Status CowStore::HoldForShipping() {
  // Blocking: the tracker's probe holds the exclusive lock only for an
  // instant.
  while (::flock(fd_, LOCK_SH) != 0) {
    if (errno != EINTR) return core::ErrnoStatus(errno, "lock copy-on-write store " + path_);
  }
  return core::Status::Ok();
}

bool CowStore::HeldByAShipper() const {
  // Our own descriptor is a different open file: an exclusive lock succeeds
  // only when no shipper holds its shared one.
  // Any failure to tell counts as held: never abort a running shipper.
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) return true;
  ::flock(fd_, LOCK_UN);
  return false;
}

std::string CowStore::overflow_reason() const {
  switch (header_->overflow.load()) {
    case kCap:
      return "the copy-on-write store " + path_ + " passed its cap of " +
             std::to_string(header_->cap_blocks * header_->block_size_bytes) + " bytes";
    case kIo: return "the copy-on-write store " + path_ + " could not be written";
    case kAbandoned:
      return "the tracker abandoned the cycle (it was stopped, or the cycle was aborted or frozen again)";
    default: return "";
  }
}

DirtyBitmap CowStore::FrozenBitmap() const {
  DirtyBitmap bits(header_->block_count);
  for (std::uint64_t b = 0; b < header_->block_count; b += 64) {
    std::uint64_t w = FrozenWords()[b >> 6].load(std::memory_order_relaxed);
    if (w) bits.OrWord(b, w);
  }
  return bits;
}

std::uint64_t CowStore::epoch() const { return header_->epoch; }
std::uint32_t CowStore::block_size_bytes() const { return header_->block_size_bytes; }
std::uint64_t CowStore::block_count() const { return header_->block_count; }
std::uint64_t CowStore::preserved_blocks() const { return header_->used_slots.load(); }
std::uint64_t CowStore::cap_bytes() const { return header_->cap_blocks * header_->block_size_bytes; }

}  // namespace blkrep::tracker
