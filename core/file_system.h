// FileSystem: the small file interface the journal and job state are written
// through (leveldb's Env, cut down to what we use).
//
// Implementations:
//   - PosixFileSystem: the real one (pread/pwrite/fdatasync/rename/fsync dir).
//   - MemoryFileSystem (memory_file_system.h): in memory, with crash
//     simulation: data written but not Sync()ed, and renames not made durable
//     with SyncDir(), are lost (or torn) by SimulateCrash().
//   - FaultInjectingFileSystem (fault_injecting_file_system.h): fails chosen
//     operations of another FileSystem.
//
// Paths are plain strings; directories are separated by '/'.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace blkrep::core {

// An open file. Not thread-safe: callers serialize access to one File.
class File {
 public:
  virtual ~File() = default;
  // Reads up to out.size() bytes at offset; returns how many were read
  // (fewer only at end of file; 0 at or past the end).
  virtual Result<std::size_t> ReadAt(std::uint64_t offset_bytes,
                                     std::span<std::byte> out) = 0;
  // Writes all of data at offset, extending the file as needed.
  virtual Status WriteAt(std::uint64_t offset_bytes,
                         std::span<const std::byte> data) = 0;
  // Makes the file's data (and size) durable: fdatasync.
  virtual Status Sync() = 0;
  virtual Result<std::uint64_t> Size() = 0;
  virtual Status Truncate(std::uint64_t size_bytes) = 0;
};

// An exclusive lock on a path, held until destroyed.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

enum class OpenMode : std::uint8_t {
  kReadOnly,       // must exist
  kReadWrite,      // must exist
  kCreate,         // read-write, created if missing
  kCreateTruncate  // read-write, created or emptied
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  virtual Result<std::unique_ptr<File>> Open(const std::string& path,
                                             OpenMode mode) = 0;
  // Atomically replaces `to` with `from` (rename(2)). Durable after
  // SyncDir() of the directory.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  virtual Status Remove(const std::string& path) = 0;
  virtual Result<bool> Exists(const std::string& path) = 0;
  // mkdir -p.
  virtual Status CreateDirectories(const std::string& path) = 0;
  // Makes the directory's entries (creations, renames) durable.
  virtual Status SyncDir(const std::string& path) = 0;
  // Names (not paths) of the entries of a directory.
  virtual Result<std::vector<std::string>> List(const std::string& path) = 0;
  // Takes an exclusive lock on `path` (created if missing) without
  // waiting: kAborted naming the holder when another process (or, in memory,
  // another holder) has it. Released when the FileLock is destroyed or the
  // process dies.
  virtual Result<std::unique_ptr<FileLock>> Lock(const std::string& path) = 0;
};

// The process-wide real file system. Stateless; safe from any thread.
FileSystem& PosixFileSystemInstance();

// Reads a whole file. Convenience over Open + ReadAt.
Result<std::vector<std::byte>> ReadWholeFile(FileSystem& fs,
                                             const std::string& path);

// "dir/name" -> "dir"; "name" -> ".".
std::string DirName(const std::string& path);

}  // namespace blkrep::core
