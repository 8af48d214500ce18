#include "core/fault_injecting_file_system.h"

#include <algorithm>

namespace blkrep::core {
namespace {

class FaultInjectingFile final : public File {
 public:
  FaultInjectingFile(FaultInjectingFileSystem& fs, std::unique_ptr<File> inner,
                     std::string path)
      : fs_(fs), inner_(std::move(inner)), path_(std::move(path)) {}

  Result<std::size_t> ReadAt(std::uint64_t offset_bytes,
                             std::span<std::byte> out) override {
    if (int e = fs_.NextCall(FileOp::kRead)) return ErrnoStatus(e, "read " + path_);
    return inner_->ReadAt(offset_bytes, out);
  }

  Status WriteAt(std::uint64_t offset_bytes,
                 std::span<const std::byte> data) override {
    bool was_dead = fs_.dead();  // after death nothing, not even a prefix, lands
    if (int e = fs_.NextCall(FileOp::kWrite)) {
      std::size_t torn = was_dead ? 0 : std::min(fs_.torn_write_bytes(), data.size());
      if (torn > 0) {
        BLKREP_RETURN_IF_ERROR(inner_->WriteAt(offset_bytes, data.first(torn)));
      }
      return ErrnoStatus(e, "write " + path_);
    }
    if (int e = fs_.extending_write_errno()) {
      BLKREP_ASSIGN_OR_RETURN(std::uint64_t size, inner_->Size());
      if (offset_bytes + data.size() > size) return ErrnoStatus(e, "write " + path_);
    }
    return inner_->WriteAt(offset_bytes, data);
  }

  Status Sync() override {
    if (int e = fs_.NextCall(FileOp::kSync)) return ErrnoStatus(e, "fdatasync " + path_);
    return inner_->Sync();
  }

  Result<std::uint64_t> Size() override { return inner_->Size(); }

  Status Truncate(std::uint64_t size_bytes) override {
    if (int e = fs_.NextCall(FileOp::kTruncate)) {
      return ErrnoStatus(e, "truncate " + path_);
    }
    return inner_->Truncate(size_bytes);
  }

 private:
  FaultInjectingFileSystem& fs_;
  std::unique_ptr<File> inner_;
  std::string path_;
};

}  // namespace

void FaultInjectingFileSystem::FailAfter(FileOp op, std::uint64_t successful_calls,
                                         int error_number, bool sticky) {
  std::lock_guard lock(mu_);
  faults_[static_cast<std::size_t>(op)] = {true, successful_calls, error_number, sticky};
}

void FaultInjectingFileSystem::SetTornWriteBytes(std::size_t bytes) {
  std::lock_guard lock(mu_);
  torn_write_bytes_ = bytes;
}

void FaultInjectingFileSystem::ClearFaults() {
  std::lock_guard lock(mu_);
  faults_ = {};
  torn_write_bytes_ = 0;
  extending_write_errno_ = 0;
  die_at_first_fault_ = false;
  dead_ = false;
}

void FaultInjectingFileSystem::SetDieAtFirstFault(bool on) {
  std::lock_guard lock(mu_);
  die_at_first_fault_ = on;
}

bool FaultInjectingFileSystem::dead() {
  std::lock_guard lock(mu_);
  return dead_;
}

void FaultInjectingFileSystem::FailExtendingWrites(int error_number) {
  std::lock_guard lock(mu_);
  extending_write_errno_ = error_number;
}

int FaultInjectingFileSystem::extending_write_errno() {
  std::lock_guard lock(mu_);
  return extending_write_errno_;
}

std::uint64_t FaultInjectingFileSystem::calls(FileOp op) {
  std::lock_guard lock(mu_);
  return calls_[static_cast<std::size_t>(op)];
}

std::size_t FaultInjectingFileSystem::torn_write_bytes() {
  std::lock_guard lock(mu_);
  return torn_write_bytes_;
}

int FaultInjectingFileSystem::NextCall(FileOp op) {
  std::lock_guard lock(mu_);
  auto index = static_cast<std::size_t>(op);
  ++calls_[index];
  if (dead_ && op != FileOp::kRead) return EIO;
  Fault& fault = faults_[index];
  if (!fault.armed) return 0;
  if (fault.remaining_successes > 0) {
    --fault.remaining_successes;
    return 0;
  }
  int error_number = fault.error_number;
  if (!fault.sticky) fault.armed = false;
  if (die_at_first_fault_) dead_ = true;
  return error_number;
}

Result<std::unique_ptr<File>> FaultInjectingFileSystem::Open(const std::string& path,
                                                             OpenMode mode) {
  if (int e = NextCall(FileOp::kOpen)) return ErrnoStatus(e, "open " + path);
  BLKREP_ASSIGN_OR_RETURN(std::unique_ptr<File> file, inner_.Open(path, mode));
  return std::unique_ptr<File>(new FaultInjectingFile(*this, std::move(file), path));
}

Status FaultInjectingFileSystem::Rename(const std::string& from, const std::string& to) {
  if (int e = NextCall(FileOp::kRename)) return ErrnoStatus(e, "rename " + from);
  return inner_.Rename(from, to);
}

Status FaultInjectingFileSystem::Remove(const std::string& path) {
  if (int e = NextCall(FileOp::kRemove)) return ErrnoStatus(e, "remove " + path);
  return inner_.Remove(path);
}

Result<bool> FaultInjectingFileSystem::Exists(const std::string& path) {
  return inner_.Exists(path);
}

Status FaultInjectingFileSystem::CreateDirectories(const std::string& path) {
  return inner_.CreateDirectories(path);
}

Status FaultInjectingFileSystem::SyncDir(const std::string& path) {
  if (int e = NextCall(FileOp::kSyncDir)) return ErrnoStatus(e, "fsync directory " + path);
  return inner_.SyncDir(path);
}

Result<std::vector<std::string>> FaultInjectingFileSystem::List(const std::string& path) {
  return inner_.List(path);
}

Result<std::unique_ptr<FileLock>> FaultInjectingFileSystem::Lock(const std::string& path) {
  return inner_.Lock(path);
}

}  // namespace blkrep::core
