#include "core/memory_file_system.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace blkrep::core {

struct MemoryFileSystem::Inode {
  struct PendingOp {
    bool truncate = false;
    std::uint64_t offset_bytes = 0;  // or the new size for a truncate
    std::vector<std::byte> data;
  };
  std::vector<std::byte> current;
  std::vector<std::byte> durable;
  std::vector<PendingOp> pending;  // unsynced, in order
};

namespace {

using Inode = MemoryFileSystem::Inode;

void ApplyWrite(std::vector<std::byte>& bytes, std::uint64_t offset,
                std::span<const std::byte> data) {
  if (bytes.size() < offset + data.size()) bytes.resize(offset + data.size());
  std::copy(data.begin(), data.end(), bytes.begin() + static_cast<std::ptrdiff_t>(offset));
}

class MemoryFile final : public File {
 public:
  MemoryFile(std::mutex& mu, std::shared_ptr<Inode> inode, bool writable)
      : mu_(mu), inode_(std::move(inode)), writable_(writable) {}

  Result<std::size_t> ReadAt(std::uint64_t offset_bytes,
                             std::span<std::byte> out) override {
    std::lock_guard lock(mu_);
    const auto& bytes = inode_->current;
    if (offset_bytes >= bytes.size()) return std::size_t{0};
    std::size_t n = std::min<std::size_t>(out.size(), bytes.size() - offset_bytes);
    std::memcpy(out.data(), bytes.data() + offset_bytes, n);
    return n;
  }

  Status WriteAt(std::uint64_t offset_bytes,
                 std::span<const std::byte> data) override {
    if (!writable_) return ErrnoStatus(EBADF, "write to a read-only file");
    std::lock_guard lock(mu_);
    ApplyWrite(inode_->current, offset_bytes, data);
    inode_->pending.push_back(
        {false, offset_bytes, std::vector<std::byte>(data.begin(), data.end())});
    return Status::Ok();
  }

  Status Sync() override {
    std::lock_guard lock(mu_);
    inode_->durable = inode_->current;
    inode_->pending.clear();
    return Status::Ok();
  }

  Result<std::uint64_t> Size() override {
    std::lock_guard lock(mu_);
    return static_cast<std::uint64_t>(inode_->current.size());
  }

  Status Truncate(std::uint64_t size_bytes) override {
    if (!writable_) return ErrnoStatus(EBADF, "truncate a read-only file");
    std::lock_guard lock(mu_);
    inode_->current.resize(size_bytes);
    inode_->pending.push_back({true, size_bytes, {}});
    return Status::Ok();
  }

 private:
  std::mutex& mu_;
  std::shared_ptr<Inode> inode_;
  bool writable_;
};

}  // namespace

Result<std::unique_ptr<File>> MemoryFileSystem::Open(const std::string& path,
                                                     OpenMode mode) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(path);
  if (it == entries_.end()) {
    if (mode == OpenMode::kReadOnly || mode == OpenMode::kReadWrite) {
      return ErrnoStatus(ENOENT, "open " + path);
    }
    it = entries_.emplace(path, std::make_shared<Inode>()).first;
  } else if (mode == OpenMode::kCreateTruncate) {
    it->second->current.clear();
    it->second->pending.push_back({true, 0, {}});
  }
  return std::unique_ptr<File>(
      new MemoryFile(mu_, it->second, mode != OpenMode::kReadOnly));
}

Status MemoryFileSystem::Rename(const std::string& from, const std::string& to) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(from);
  if (it == entries_.end()) return ErrnoStatus(ENOENT, "rename " + from);
  std::shared_ptr<Inode> inode = it->second;
  entries_.erase(it);
  entries_[to] = std::move(inode);
  return Status::Ok();
}

Status MemoryFileSystem::Remove(const std::string& path) {
  std::lock_guard lock(mu_);
  if (entries_.erase(path) == 0) return ErrnoStatus(ENOENT, "remove " + path);
  return Status::Ok();
}

Result<bool> MemoryFileSystem::Exists(const std::string& path) {
  std::lock_guard lock(mu_);
  return entries_.count(path) > 0 || directories_.count(path) > 0;
}

Status MemoryFileSystem::CreateDirectories(const std::string& path) {
  std::lock_guard lock(mu_);
  directories_[path] = true;
  return Status::Ok();
}

Status MemoryFileSystem::SyncDir(const std::string& path) {
  std::lock_guard lock(mu_);
  // Make every entry directly inside `path` durable as it is now.
  for (auto it = durable_entries_.begin(); it != durable_entries_.end();) {
    if (DirName(it->first) == path && entries_.count(it->first) == 0) {
      it = durable_entries_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [name, inode] : entries_) {
    if (DirName(name) == path) durable_entries_[name] = inode;
  }
  return Status::Ok();
}

Result<std::vector<std::string>> MemoryFileSystem::List(const std::string& path) {
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  for (const auto& [name, inode] : entries_) {
    if (DirName(name) == path) names.push_back(name.substr(path.size() + 1));
  }
  return names;
}

namespace {
class MemoryFileLock final : public FileLock {
 public:
  MemoryFileLock(std::shared_ptr<std::map<std::string, int>> locks,
                 std::shared_ptr<std::mutex> mu, std::string path)
      : locks_(std::move(locks)), mu_(std::move(mu)), path_(std::move(path)) {}
  ~MemoryFileLock() override {
    std::lock_guard lock(*mu_);
    locks_->erase(path_);
  }

 private:
  std::shared_ptr<std::map<std::string, int>> locks_;
  std::shared_ptr<std::mutex> mu_;
  std::string path_;
};
}  // namespace

Result<std::unique_ptr<FileLock>> MemoryFileSystem::Lock(const std::string& path) {
  std::lock_guard lock(*lock_mu_);
  if (locks_->count(path)) return Status::Aborted(path + " is locked by another holder");
  (*locks_)[path] = 1;
  return std::unique_ptr<FileLock>(new MemoryFileLock(locks_, lock_mu_, path));
}

void MemoryFileSystem::SimulateCrash(CrashMode mode, std::uint64_t seed) {
  std::lock_guard lock(mu_);
  std::mt19937_64 rng(seed);
  entries_ = durable_entries_;
  // Inodes reachable from the durable namespace lose their unsynced bytes.
  for (auto& [name, inode] : entries_) {
    std::vector<std::byte> bytes = inode->durable;
    if (mode == CrashMode::kTornTail && !inode->pending.empty()) {
      std::size_t keep = rng() % (inode->pending.size() + 1);
      for (std::size_t i = 0; i < keep; ++i) {
        const auto& op = inode->pending[i];
        if (op.truncate) {
          bytes.resize(op.offset_bytes);
          continue;
        }
        std::size_t length = op.data.size();
        if (i + 1 == keep && length > 0) length = rng() % (length + 1);
        ApplyWrite(bytes, op.offset_bytes,
                   std::span<const std::byte>(op.data.data(), length));
      }
    }
    inode->current = bytes;
    inode->durable = std::move(bytes);
    inode->pending.clear();
  }
}

std::vector<std::byte> MemoryFileSystem::Contents(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(path);
  if (it == entries_.end()) return {};
  return it->second->current;
}

void MemoryFileSystem::SetContents(const std::string& path,
                                   std::vector<std::byte> bytes) {
  std::lock_guard lock(mu_);
  auto& inode = entries_[path];
  if (!inode) inode = std::make_shared<Inode>();
  inode->current = bytes;
  inode->durable = std::move(bytes);
  inode->pending.clear();
  durable_entries_[path] = inode;
}

}  // namespace blkrep::core
