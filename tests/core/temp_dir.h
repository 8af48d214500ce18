// Helpers shared by the core tests: a fresh temporary directory per test and
// small file utilities that bypass the code under test.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace blkrep::core::test_support {

// mkdtemp under $TMPDIR (or /tmp); removed with its contents on
// destruction. path() is empty if creation failed.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
        "/blkrep-core-test-XXXXXX";
    if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Creates (or truncates) `path` holding `contents`. Returns false on error.
inline bool WriteFile(const std::string& path,
                      const std::vector<std::byte>& contents) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  std::size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n <= 0) {
      ::close(fd);
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  return ::close(fd) == 0;
}

// The whole of `path`, read without the code under test; empty on error.
inline std::vector<std::byte> ReadFile(const std::string& path) {
  std::vector<std::byte> contents;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return contents;
  std::byte chunk[65536];
  ssize_t n;
  while ((n = ::read(fd, chunk, sizeof(chunk))) > 0) {
    contents.insert(contents.end(), chunk, chunk + n);
  }
  ::close(fd);
  return contents;
}

// Deterministic non-zero-ish bytes; different seeds give different data.
inline std::vector<std::byte> Pattern(std::size_t size_bytes,
                                      std::uint32_t seed) {
  std::vector<std::byte> data(size_bytes);
  std::uint32_t state = seed * 2654435761u + 1;
  for (std::byte& b : data) {
    state = state * 1103515245u + 12345u;
    b = static_cast<std::byte>((state >> 16) | 1);
  }
  return data;
}

// A zeroed heap buffer whose start is aligned to `alignment` bytes.
class AlignedBuffer {
 public:
  AlignedBuffer(std::size_t size_bytes, std::size_t alignment)
      : size_(size_bytes),
        data_(static_cast<std::byte*>(std::aligned_alloc(
            alignment, (size_bytes + alignment - 1) / alignment * alignment))) {
    std::fill(data_, data_ + size_, std::byte{0});
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  std::byte* data() { return data_; }
  std::size_t size() const { return size_; }
  std::span<std::byte> span() { return {data_, size_}; }

 private:
  std::size_t size_;
  std::byte* data_;
};

// Full path of an executable found in $PATH, /usr/sbin or /sbin; empty if
// there is none.
inline std::string FindProgram(const std::string& name) {
  const char* env_path = std::getenv("PATH");
  std::string search = std::string(env_path != nullptr ? env_path : "") +
                       ":/usr/sbin:/sbin:/usr/bin:/bin";
  std::size_t begin = 0;
  while (begin <= search.size()) {
    std::size_t end = search.find(':', begin);
    if (end == std::string::npos) end = search.size();
    std::string dir = search.substr(begin, end - begin);
    if (!dir.empty()) {
      std::string candidate = dir + "/" + name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    begin = end + 1;
  }
  return "";
}

}  // namespace blkrep::core::test_support
