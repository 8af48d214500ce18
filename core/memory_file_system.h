// MemoryFileSystem: an in-memory FileSystem that models what a crash keeps.
//
// Each file has the bytes a reader sees now and the bytes that are durable
// (as of its last Sync()). Each directory entry (creation, rename, removal)
// is durable only after SyncDir() of its directory. SimulateCrash() throws
// away what was not durable: either all of it, or (kTornTail) a random prefix
// of the unsynced writes of each file applied in order, the last one cut at a
// random byte — what a power cut does to an append-only file.
//
// Thread safety: all methods are safe from any thread (one mutex). Files
// opened before SimulateCrash() still refer to their inode; tests reopen.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "core/file_system.h"

namespace blkrep::core {

class MemoryFileSystem final : public FileSystem {
 public:
  enum class CrashMode : std::uint8_t {
    kDropUnsynced,  // only durable bytes survive
    kTornTail,      // a random prefix of unsynced writes survives, torn
  };

  MemoryFileSystem() = default;

  Result<std::unique_ptr<File>> Open(const std::string& path,
                                     OpenMode mode) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Remove(const std::string& path) override;
  Result<bool> Exists(const std::string& path) override;
  Status CreateDirectories(const std::string& path) override;
  Status SyncDir(const std::string& path) override;
  Result<std::vector<std::string>> List(const std::string& path) override;
  Result<std::unique_ptr<FileLock>> Lock(const std::string& path) override;

  void SimulateCrash(CrashMode mode, std::uint64_t seed = 0);

  // Test access to what a reader sees now. Missing file: empty.
  std::vector<std::byte> Contents(const std::string& path);
  // Replaces a file's bytes, durably (creating it durably if needed).
  void SetContents(const std::string& path, std::vector<std::byte> bytes);

  struct Inode;  // defined in the .cc; public so the File can name it

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Inode>> entries_;          // GUARDED_BY(mu_)
  std::map<std::string, std::shared_ptr<Inode>> durable_entries_;  // GUARDED_BY(mu_)
  std::map<std::string, bool> directories_;                        // GUARDED_BY(mu_)
  // Held locks; shared with the FileLock objects, which may outlive us.
  std::shared_ptr<std::map<std::string, int>> locks_ =
      std::make_shared<std::map<std::string, int>>();                // GUARDED_BY(*lock_mu_)
  std::shared_ptr<std::mutex> lock_mu_ = std::make_shared<std::mutex>();
};

}  // namespace blkrep::core
