// FaultInjectingFileSystem: a FileSystem that forwards to another and fails
// the operations a test chooses — the filter that stands between the journal
// and its files in crash and error tests.
//
// A fault fires on the (n+1)-th call of an operation counted from when it was
// armed, with the errno given; a sticky fault keeps firing. A failing write
// may first write a prefix of its bytes (a torn write), as a dying disk does.
//
// Thread safety: safe from any thread; files opened through it share its
// fault table.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>

#include "core/file_system.h"

namespace blkrep::core {

enum class FileOp : std::uint8_t {
  kOpen = 0, kRead, kWrite, kSync, kTruncate, kRename, kRemove, kSyncDir, kCount
};

class FaultInjectingFileSystem final : public FileSystem {
 public:
  // `inner` must outlive this object and every file opened through it.
  explicit FaultInjectingFileSystem(FileSystem& inner) : inner_(inner) {}

  // Arms a fault: after `successful_calls` more successful calls of `op`,
  // calls fail with error_number (once, or every time when sticky).
  void FailAfter(FileOp op, std::uint64_t successful_calls, int error_number,
                 bool sticky = true);
  // Fails every write that would grow its file with error_number (ENOSPC
  // on a full file system), while writes inside the file still succeed.
  // 0 turns it off.
  void FailExtendingWrites(int error_number);
  // A failing write first writes this many bytes of its data (default 0).
  void SetTornWriteBytes(std::size_t bytes);
  void ClearFaults();
  // When on, the first fault that fires is the instant the machine dies:
  // from then on every call that would change a file or directory fails
  // with EIO, so nothing after the crash reaches the inner file system.
  void SetDieAtFirstFault(bool on);
  bool dead();
  // Calls of `op` so far (failed ones included).
  std::uint64_t calls(FileOp op);

  Result<std::unique_ptr<File>> Open(const std::string& path,
                                     OpenMode mode) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Remove(const std::string& path) override;
  Result<bool> Exists(const std::string& path) override;
  Status CreateDirectories(const std::string& path) override;
  Status SyncDir(const std::string& path) override;
  Result<std::vector<std::string>> List(const std::string& path) override;
  Result<std::unique_ptr<FileLock>> Lock(const std::string& path) override;

  // Counts a call of `op`; returns the errno to fail it with, or 0.
  // Public for the files it opens.
  int NextCall(FileOp op);
  int extending_write_errno();
  std::size_t torn_write_bytes();

 private:
  struct Fault {
    bool armed = false;
    std::uint64_t remaining_successes = 0;
    int error_number = 0;
    bool sticky = false;
  };

  FileSystem& inner_;
  std::mutex mu_;
  std::array<Fault, static_cast<std::size_t>(FileOp::kCount)> faults_{};  // GUARDED_BY(mu_)
  std::array<std::uint64_t, static_cast<std::size_t>(FileOp::kCount)> calls_{};  // GUARDED_BY(mu_)
  std::size_t torn_write_bytes_ = 0;  // GUARDED_BY(mu_)
  int extending_write_errno_ = 0;     // GUARDED_BY(mu_)
  bool die_at_first_fault_ = false;   // GUARDED_BY(mu_)
  bool dead_ = false;                 // GUARDED_BY(mu_)
};

}  // namespace blkrep::core
