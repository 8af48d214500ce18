// Tests of the blkrep program as a user runs it: real processes, real files,
// SIGKILL, exit statuses and --json output. The binary comes from $BLKREP_BIN
// (set by ctest).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/core/temp_dir.h"
#include "tests/tools/cli_test_util.h"

extern char** environ;

namespace blkrep::tools {
namespace {

using namespace cli_test;  // NOLINT: the shared runner

using core::test_support::TempDir;
using nlohmann::json;

void MakeVolume(const std::string& path, std::uint64_t size) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  ::close(fd);
}

std::vector<unsigned char> ReadAt(const std::string& path, std::uint64_t offset, std::size_t n) {
  std::vector<unsigned char> buf(n);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_EQ(::pread(fd, buf.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  ::close(fd);
  return buf;
}

json Inspect(const TempDir& dir, const std::string& state) {
  RunResult run = Blkrep(dir, {"journal", "inspect", "vm100", "--json", "--state-dir", state});
  EXPECT_EQ(run.exit_status, 0) << run.err;
  return json::parse(run.out);
}

std::set<std::uint64_t> BlocksOf(const json& ranges) {
  std::set<std::uint64_t> blocks;
  for (const auto& r : ranges) {
    for (std::uint64_t b = r[0]; b < r[0].get<std::uint64_t>() + r[1].get<std::uint64_t>(); ++b) blocks.insert(b);
  }
  return blocks;
}

TEST(CliTest, InspectJsonHoldsExactlyTheWrittenBlocks) {
  TempDir dir;
  std::string vol = dir.path() + "/disk0.img", state = dir.path() + "/state";
  MakeVolume(vol, 8 << 20);
  struct Write {
    std::uint64_t offset, length;
    std::string extra;
  };
  // Unaligned, one byte, spanning blocks, trim and write-zeroes; 4 KiB blocks.
  std::vector<Write> writes = {{0, 1, ""},         {4095, 2, ""},      {65536, 65536, "--zero"},
                               {1 << 20, 3, ""},   {5000000, 100000, "--trim"}, {(8 << 20) - 1, 1, ""}};
  std::set<std::uint64_t> expected;
  for (const auto& w : writes) {
    std::vector<std::string> args = {"journal", "write", "vm100", "disk0=" + vol, "--offset",
                                     std::to_string(w.offset), "--length", std::to_string(w.length),
                                     "--block-size", "4K", "--state-dir", state};
    if (!w.extra.empty()) args.push_back(w.extra);
    RunResult run = Blkrep(dir, args);
    ASSERT_EQ(run.exit_status, 0) << run.err;
    for (std::uint64_t b = w.offset / 4096; b <= (w.offset + w.length - 1) / 4096; ++b) expected.insert(b);
  }
  json j = Inspect(dir, state);
  EXPECT_EQ(j["guest"], "vm100");
  EXPECT_EQ(j["clean_close"], true);
  EXPECT_EQ(j["resync_required"], false);
  EXPECT_TRUE(j["resync_reason"].is_null());
  ASSERT_EQ(j["files"].size(), 1u);
  ASSERT_EQ(j["volumes"].size(), 1u);
  const json& v = j["volumes"][0];
  EXPECT_EQ(v["name"], "disk0");
  EXPECT_EQ(v["path"], vol);
  EXPECT_EQ(v["size_bytes"], 8 << 20);
  EXPECT_EQ(v["block_size"], 4096);
  EXPECT_EQ(v["dirty_blocks"], expected.size());
  EXPECT_EQ(BlocksOf(v["dirty_ranges"]), expected);
  EXPECT_TRUE(j["targets"].is_array());
  // The data really reached the volume (pattern 0xA5, zeroes for --zero).
  EXPECT_EQ(ReadAt(vol, 4095, 2), (std::vector<unsigned char>{0xA5, 0xA5}));
  EXPECT_EQ(ReadAt(vol, 65536, 1)[0], 0);
}

TEST(CliTest, SigkilledWriterLosesNoAcknowledgedWriteAndNeedsNoResync) {
  TempDir dir;
  std::string vol = dir.path() + "/disk0.img", state = dir.path() + "/state";
  constexpr std::uint64_t kVolume = 256 << 20, kLength = 16384;
  MakeVolume(vol, kVolume);
  std::mt19937_64 rng(2026);
  std::set<std::uint64_t> acknowledged_blocks;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::uint64_t start = (rng() % 4096) * kLength;
    std::uint64_t count = (kVolume - start) / kLength;
    std::string acks = dir.path() + "/acks";
    int out = ::open(acks.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(out, 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out, 1);
    std::string bin = Binary();
    std::vector<std::string> args = {bin, "journal", "write", "vm100", "disk0=" + vol, "--offset",
                                     std::to_string(start), "--length", std::to_string(kLength), "--count",
                                     std::to_string(count), "--pattern", std::to_string(round + 1),
                                     "--block-size", "4K", "--state-dir", state};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    ASSERT_EQ(posix_spawn(&pid, bin.c_str(), &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out);
    // Kill it at a random moment once it has acknowledged some writes.
    std::size_t kill_after = 50 + rng() % 800;
    for (int i = 0; i < 20000; ++i) {
      struct stat st{};
      ::stat(acks.c_str(), &st);
      if (static_cast<std::size_t>(st.st_size) >= kill_after * 20) break;
      ::usleep(200);
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer finished before it could be killed";
    // Every line printed was printed after its write returned.
    std::ifstream in(acks);
    std::uint64_t offset = 0, length = 0, lines = 0;
    std::string word;
    std::vector<std::uint64_t> offsets;
    while (in >> word >> offset >> length) {
      ASSERT_EQ(length, kLength);
      offsets.push_back(offset);
      for (std::uint64_t b = offset / 4096; b < (offset + length) / 4096; ++b) acknowledged_blocks.insert(b);
      ++lines;
    }
    ASSERT_GT(lines, 0u);
    ASSERT_LT(lines, count);
    json j = Inspect(dir, state);
    const json& v = j["volumes"][0];
    EXPECT_EQ(v["resync_required"], false) << v["resync_reason"];
    std::set<std::uint64_t> dirty = BlocksOf(v["dirty_ranges"]);
    for (std::uint64_t b : acknowledged_blocks) ASSERT_TRUE(dirty.count(b)) << "lost block " << b;
    // The acknowledged data is on the volume (the page cache survives a
    // process kill).
    for (std::uint64_t o : {offsets.front(), offsets.back()}) {
      EXPECT_EQ(ReadAt(vol, o, 1)[0], round + 1) << "offset " << o;
    }
  }
}

TEST(CliTest, CorruptJournalIsReportedAsResyncRequiredAndStillServes) {
  TempDir dir;
  std::string vol = dir.path() + "/disk0.img", state = dir.path() + "/state";
  MakeVolume(vol, 4 << 20);
  ASSERT_EQ(Blkrep(dir, {"journal", "write", "vm100", "disk0=" + vol, "--offset", "0", "--length", "64K",
                         "--state-dir", state}).exit_status, 0);
  std::string journal = state + "/journal/vm100/disk0.journal";
  int fd = ::open(journal.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char byte = 0;
  ASSERT_EQ(::pread(fd, &byte, 1, 4100), 1);
  byte ^= 0x40;
  ASSERT_EQ(::pwrite(fd, &byte, 1, 4100), 1);
  ::close(fd);
  json j = Inspect(dir, state);
  EXPECT_EQ(j["resync_required"], true);
  EXPECT_NE(j["resync_reason"].get<std::string>().find("corrupt"), std::string::npos) << j["resync_reason"];
  RunResult write = Blkrep(dir, {"journal", "write", "vm100", "disk0=" + vol, "--offset", "1M", "--length", "4K",
                           "--state-dir", state});
  EXPECT_EQ(write.exit_status, 0) << write.err;
  EXPECT_EQ(Inspect(dir, state)["resync_required"], true);
}

TEST(CliTest, VolumeModifiedWhileUntrackedRequiresResync) {
  TempDir dir;
  std::string vol = dir.path() + "/disk0.img", state = dir.path() + "/state";
  MakeVolume(vol, 4 << 20);
  auto write = [&] {
    return Blkrep(dir, {"journal", "write", "vm100", "disk0=" + vol, "--offset", "0", "--length", "4K",
                        "--state-dir", state});
  };
  ASSERT_EQ(write().exit_status, 0);
  ASSERT_EQ(write().exit_status, 0);
  EXPECT_EQ(Inspect(dir, state)["resync_required"], false);
  ::usleep(10000);
  int fd = ::open(vol.c_str(), O_WRONLY);
  ASSERT_EQ(::pwrite(fd, "x", 1, 3 << 20), 1);
  ::close(fd);
  ASSERT_EQ(write().exit_status, 0);
  json j = Inspect(dir, state);
  EXPECT_EQ(j["resync_required"], true);
  EXPECT_NE(j["resync_reason"].get<std::string>().find("modified while untracked"), std::string::npos);
}

TEST(CliTest, BadArgumentsExitTwoWithOneLineError) {
  TempDir dir;
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"journal", "inspect"},
           {"journal", "inspect", "vm100", "--bogus"},
           {"journal", "frobnicate"},
           {"no-such-command"},
           {"journal", "write", "vm100", "disk0", "--offset", "0", "--length", "1"},
           {"journal", "write", "vm100", "disk0=/x", "--offset", "12Q", "--length", "1"},
           {"journal", "inspect", "../etc"}}) {
    RunResult run = Blkrep(dir, args);
    EXPECT_EQ(run.exit_status, 2) << args[0] << " " << (args.size() > 1 ? args[1] : "");
    EXPECT_EQ(run.err.rfind("blkrep: error: ", 0), 0u) << run.err;
    EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << run.err;
  }
}

TEST(CliTest, MissingJournalOrVolumeExitsOne) {
  TempDir dir;
  RunResult none = Blkrep(dir, {"journal", "inspect", "vm999", "--state-dir", dir.path() + "/state"});
  EXPECT_EQ(none.exit_status, 1);
  EXPECT_NE(none.err.find("no journal for guest vm999"), std::string::npos) << none.err;
  RunResult missing = Blkrep(dir, {"journal", "write", "vm100", "disk0=" + dir.path() + "/absent.img", "--offset",
                             "0", "--length", "1", "--state-dir", dir.path() + "/state"});
  EXPECT_EQ(missing.exit_status, 1);
  EXPECT_NE(missing.err.find("absent.img"), std::string::npos) << missing.err;
}

TEST(CliTest, StateDirectoryComesFromTheEnvironment) {
  TempDir dir;
  std::string vol = dir.path() + "/disk0.img", state = dir.path() + "/envstate";
  MakeVolume(vol, 1 << 20);
  ::setenv("BLKREP_STATE_DIR", state.c_str(), 1);
  RunResult run = Blkrep(dir, {"journal", "write", "vm100", "disk0=" + vol, "--offset", "0", "--length", "1"});
  ::unsetenv("BLKREP_STATE_DIR");
  ASSERT_EQ(run.exit_status, 0) << run.err;
  struct stat st{};
  EXPECT_EQ(::stat((state + "/journal/vm100/disk0.journal").c_str(), &st), 0);
}

TEST(CliTest, JobAndTargetCommandsRefuseBadArgumentsWithExitTwo) {
  TempDir dir;
  std::string state = dir.path() + "/state";
  ASSERT_EQ(Blkrep(dir, {"target", "add", "t1", "--exec", "true", "--state-dir", state}).exit_status, 0);
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"target", "add", "t2"},                                        // no transport
           {"target", "add", "t2", "--exec", "a", "--connect", "h:1"},    // two transports
           {"target", "add", "t2", "--connect", "host-without-port"},
           {"target", "add", "t2", "--connect", "h:1"},                   // TCP without authentication
           {"target", "add", "../t", "--exec", "true"},
           {"target", "add", "t1", "--exec", "true"},                     // exists
           {"target", "frobnicate"},
           {"create-local-job", "vm100", "t1"},                           // not GUEST-N
           {"create-local-job", "vm100-x", "t1"},
           {"create-local-job", "../x-1", "t1"},
           {"create-local-job", "vm100-1", "nosuchtarget"},
           {"create-local-job", "vm100-1", "t1", "--rate", "fast"},
           {"run", "--id", "not-a-job-id!"},
           {"run", "--zstd-level", "99"},
           {"run", "--batch-size", "1"},
           {"status", "extra"},
           {"receive"},
           {"receive", "--stdio"},
           {"receive", "--stdio", "--listen", "127.0.0.1:0", "--replica-dir", "r"},
           {"receive", "--listen", "127.0.0.1:0", "--replica-dir", "r"}}) {  // no authentication
    args.push_back("--state-dir");
    args.push_back(state);
    RunResult run = Blkrep(dir, args);
    std::string shown;
    for (const auto& a : args) shown += a + " ";
    EXPECT_EQ(run.exit_status, 2) << shown << "\n" << run.err;
    EXPECT_EQ(run.err.rfind("blkrep: error: ", 0), 0u) << shown << "\n" << run.err;
    EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << shown << "\n" << run.err;
  }
  // A job of a guest can exist once per target; an unknown job fails (1).
  ASSERT_EQ(Blkrep(dir, {"create-local-job", "vm100-1", "t1", "--state-dir", state}).exit_status, 0);
  EXPECT_EQ(Blkrep(dir, {"create-local-job", "vm100-2", "t1", "--state-dir", state}).exit_status, 2);
  RunResult unknown = Blkrep(dir, {"run", "--id", "vm100-9", "--state-dir", state});
  EXPECT_EQ(unknown.exit_status, 1) << unknown.err;
  EXPECT_NE(unknown.err.find("no job vm100-9"), std::string::npos) << unknown.err;
}

}  // namespace
}  // namespace blkrep::tools
