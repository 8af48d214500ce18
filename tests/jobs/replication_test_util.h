// A replication rig for end-to-end tests: a temporary state directory, file
// volumes, a `blkrep track` process, a local replica directory reached with
// `--exec 'blkrep receive --stdio'`, and helpers for the job commands.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "proto/transport.h"
#include "tests/tracker/nbd_test_util.h"

namespace blkrep::jobs::test {

using namespace blkrep::tracker::nbd_test;  // NOLINT: the shared process and NBD helpers

inline constexpr std::uint64_t kMiB = 1 << 20;

using proto::ShellQuote;  // quoting for sh -c, as the --exec transport does

class Rig {
 public:
  Rig() { ::mkdir(replica_dir().c_str(), 0700); }

  const TempDir& dir() const { return dir_; }
  std::string state_dir() const { return dir_.path() + "/state"; }
  std::string replica_dir() const { return dir_.path() + "/replicas"; }
  std::string ReplicaPath(const std::string& name) const { return replica_dir() + "/" + kGuest + "/" + name + ".img"; }
  Tracker& tracker() { return *tracker_; }
  const std::vector<VolumeSpec>& volumes() const { return volumes_; }

  void AddVolume(const std::string& name, std::uint64_t size_bytes) {
    std::string path = dir_.File(name + ".img");
    MakeVolume(path, size_bytes);
    volumes_.push_back({name, path});
  }

  bool StartTracker(std::vector<std::string> extra = {}) {
    if (!tracker_) tracker_ = std::make_unique<Tracker>(dir_, volumes_, extra);
    return tracker_->Start();
  }

  RunResult Blkrep(std::vector<std::string> args, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    std::vector<std::string> argv = {BlkrepBinary()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--state-dir");
    argv.push_back(state_dir());
    return RunProgram(dir_, argv, timeout);
  }

  bool AddTarget(const std::string& name, std::vector<std::string> spec) {
    std::vector<std::string> args = {"target", "add", name};
    args.insert(args.end(), spec.begin(), spec.end());
    RunResult r = Blkrep(args);
    EXPECT_EQ(r.exit_status, 0) << Describe(r);
    return r.exit_status == 0;
  }

  // A receiver on this machine, optionally behind a shell pipeline prefix
  // (e.g. "head -c 1000 |" to cut the stream).
  std::string ReceiveCommand(const std::string& prefix = "") const {
    return prefix + ShellQuote(BlkrepBinary()) + " receive --stdio --replica-dir " + ShellQuote(replica_dir());
  }
  bool AddLocalTarget(const std::string& name, const std::string& prefix = "") {
    return AddTarget(name, {"--exec", ReceiveCommand(prefix)});
  }

  bool CreateJob(const std::string& id, const std::string& target, std::vector<std::string> more = {}) {
    std::vector<std::string> args = {"create-local-job", id, target};
    args.insert(args.end(), more.begin(), more.end());
    RunResult r = Blkrep(args);
    EXPECT_EQ(r.exit_status, 0) << Describe(r);
    return r.exit_status == 0;
  }

  // `run --id ID --json`; the job's report, or null (with a test failure)
  // when the run failed.
  json Run(const std::string& id, std::vector<std::string> more = {}) {
    std::vector<std::string> args = {"run", "--id", id, "--json"};
    args.insert(args.end(), more.begin(), more.end());
    RunResult r = Blkrep(args, std::chrono::seconds(120));
    EXPECT_EQ(r.exit_status, 0) << Describe(r);
    json parsed = json::parse(r.out, nullptr, false);
    if (r.exit_status != 0 || !parsed.is_array() || parsed.size() != 1) return json();
    return parsed[0];
  }

  json Status(const std::string& id) {
    RunResult r = Blkrep({"status", "--json"});
    EXPECT_EQ(r.exit_status, 0) << Describe(r);
    json parsed = json::parse(r.out, nullptr, false);
    if (parsed.is_array()) {
      for (const auto& j : parsed) {
        if (j["id"] == id) return j;
      }
    }
    ADD_FAILURE() << "no job " << id << " in status: " << r.out;
    return json::object();
  }

  bool QemuIo(const std::string& qemu_io, const std::string& name, const std::vector<std::string>& commands) {
    std::vector<std::string> argv = {qemu_io, "-f", "raw"};
    for (const auto& c : commands) {
      argv.push_back("-c");
      argv.push_back(c);
    }
    argv.push_back(tracker_->Uri(name));
    RunResult r = RunProgram(dir_, argv);
    EXPECT_EQ(r.exit_status, 0) << Describe(r);
    return r.exit_status == 0;
  }

  std::uint64_t TotalBlocks() const {
    std::uint64_t n = 0;
    for (const auto& v : volumes_) n += (FileSize(v.path) + kBlockBytes - 1) / kBlockBytes;
    return n;
  }

  void ExpectReplicasEqualSources() const {
    for (const auto& v : volumes_) {
      std::vector<std::uint8_t> source = ReadAll(v.path);
      std::vector<std::uint8_t> replica = ReadAll(ReplicaPath(v.name));
      ASSERT_EQ(replica.size(), source.size()) << v.name;
      EXPECT_TRUE(replica == source) << v.name << ": replica differs in blocks " << Difference({}, ChangedBlocks(source, replica));
    }
  }

  std::vector<std::vector<std::uint8_t>> ReplicaImages() const {
    std::vector<std::vector<std::uint8_t>> out;
    for (const auto& v : volumes_) out.push_back(ReadAll(ReplicaPath(v.name)));
    return out;
  }

 private:
  TempDir dir_;
  std::vector<VolumeSpec> volumes_;
  std::unique_ptr<Tracker> tracker_;
};

// tests/jobs/stamp_writer.py as a child process.
class StampWriter {
 public:
  StampWriter(Rig& rig, const std::string& python, const std::vector<std::string>& exports) : rig_(rig) {
    std::vector<std::string> argv = {python, std::string(BLKREP_JOBS_TEST_SCRIPTS) + "/stamp_writer.py",
                                     rig.tracker().socket(), StopFile(), ReadyFile()};
    argv.insert(argv.end(), exports.begin(), exports.end());
    started_ = process_.Start(argv, rig.dir().File("writer.out"), rig.dir().File("writer.err"));
  }
  ~StampWriter() { Stop(); }

  std::string StopFile() const { return rig_.dir().File("writer.stop"); }
  std::string ReadyFile() const { return rig_.dir().File("writer.ready"); }

  bool WaitReady() {
    auto deadline = Clock::now() + std::chrono::seconds(60);
    while (started_ && Clock::now() < deadline) {
      if (::access(ReadyFile().c_str(), F_OK) == 0) return true;
      if (!process_.running()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "the stamp writer did not get ready: " << process_.err();
    return false;
  }

  // The newest stamp seen in the source volumes right now (a lower bound
  // of the writes done).
  std::uint64_t Progress() const {
    std::uint64_t newest = 0;
    for (const auto& v : rig_.volumes()) {
      std::vector<std::uint8_t> image = ReadAll(v.path);
      for (std::size_t at = 0; at + 16 <= image.size(); at += kBlockBytes) {
        std::uint64_t seq;
        std::memcpy(&seq, image.data() + at, 8);
        newest = std::max(newest, seq);
      }
    }
    return newest;
  }

  // Stops the writer; the number of its last write (0 on failure).
  std::uint64_t Stop() {
    if (stopped_ || !started_) return last_;
    stopped_ = true;
    std::ofstream(StopFile()) << "stop\n";
    auto status = process_.Wait(std::chrono::seconds(30));
    EXPECT_EQ(status.value_or(-1), 0) << process_.err();
    last_ = std::strtoull(process_.out().c_str(), nullptr, 10);
    return last_;
  }

 private:
  Rig& rig_;
  Process process_;
  bool started_ = false;
  bool stopped_ = false;
  std::uint64_t last_ = 0;
};

// Checks that `images` (the volumes in writer order) hold one instant of the
// stamp writer's history: with S the newest stamp found, every block holds
// the last write at or before S that targeted it. Returns "" or the first
// problem; *newest gets S.
inline std::string CheckPointInTime(const std::vector<std::vector<std::uint8_t>>& images, std::uint64_t* newest) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> stamps;  // (seq, block) per block in order
  for (const auto& image : images) {
    for (std::size_t at = 0; at < image.size(); at += kBlockBytes) {
      std::uint64_t seq, block;
      std::memcpy(&seq, image.data() + at, 8);
      std::memcpy(&block, image.data() + at + 8, 8);
      stamps.emplace_back(seq, block);
    }
  }
  const std::uint64_t n = stamps.size();
  std::uint64_t s_max = 0;
  for (auto [seq, block] : stamps) s_max = std::max(s_max, seq);
  *newest = s_max;
  for (std::uint64_t b = 0; b < n; ++b) {
    auto [seq, block] = stamps[b];
    if (block != b % n || seq % n != b) {
      return "block " + std::to_string(b) + " holds a foreign stamp (" + std::to_string(seq) + ", " +
             std::to_string(block) + ")";
    }
    std::uint64_t expected = s_max - ((s_max + n - b % n) % n);
    if (seq != expected) {
      return "block " + std::to_string(b) + " holds write " + std::to_string(seq) + ", but the image's newest write " +
             std::to_string(s_max) + " implies write " + std::to_string(expected) + ": not one point in time";
    }
  }
  return "";
}

// A local target whose stream is cut (by cut_stream.py, streaming) after
// the number of bytes `cut_file` holds, or not cut when it holds "all". The
// receiver makes its staging durable every 64 KiB, so cuts leave something
// to resume.
inline bool AddCuttableTarget(Rig& rig, const std::string& name, const std::string& python, const std::string& cut_file) {
  std::string receive = rig.ReceiveCommand() + " --sync-interval 64K";
  return rig.AddTarget(
      name, {"--exec", "n=$(cat " + ShellQuote(cut_file) + "); if [ \"$n\" = all ]; then exec " + receive +
                           "; else " + ShellQuote(python) + " " +
                           ShellQuote(std::string(BLKREP_JOBS_TEST_SCRIPTS) + "/cut_stream.py") + " \"$n\" | " +
                           receive + "; fi"});
}

}  // namespace blkrep::jobs::test
