// Replication when things go wrong, through the command line: the transport
// cut at random byte offsets (the replica keeps the previous cycle, the next
// run resumes), corrupted and hostile streams fed to `blkrep receive`
// (one-line error, exit 1 or 2, replica untouched), and TCP with a
// pre-shared key (an unauthenticated peer is refused).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/hash.h"
#include "core/file_system.h"
#include "proto/frame.h"
#include "receiver/guest_state.h"
#include "receiver/receiver.h"
#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

namespace fs = std::filesystem;

std::string Checksum(const std::string& path) {
  std::vector<std::uint8_t> bytes = ReadAll(path);
  return std::to_string(core::Xxh3_64(bytes.data(), bytes.size())) + "/" + std::to_string(bytes.size());
}

// Every file under `dir` (the replicas and the receiver's state), by hash.
std::map<std::string, std::string> Snapshot(const std::string& dir, bool images_only = false) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::string p = e.path().string();
    if (images_only && !p.ends_with(".img")) continue;
    if (p.ends_with(".lock")) continue;
    out[p.substr(dir.size())] = Checksum(p);
  }
  return out;
}

void CopyTree(const std::string& from, const std::string& to) {
  fs::remove_all(to);
  fs::copy(from, to, fs::copy_options::recursive);
}

// A copied replica is another file, which the receiver takes for a
// replaced one (docs/replica-format.md, "Replica identity"). For copies that
// stand for the replica itself, the copied state forgets which file its
// replicas were, as a version 1 state file does.
void ForgetReplicaIdentities(const std::string& guest_dir) {
  core::FileSystem& files = core::PosixFileSystemInstance();
  core::Result<receiver::GuestState> state = receiver::ReadGuestStateFile(files, guest_dir);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  for (receiver::VolumeState& v : state->volumes) v.replica = receiver::ReplicaIdentity{};
  core::Status written = receiver::WriteGuestStateFile(files, guest_dir, *state);
  ASSERT_TRUE(written.ok()) << written.ToString();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (c == '\n') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

TEST(ReplicationFaultsTest, ACutAnywhereKeepsThePreviousCycleAndTheNextRunResumes) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 8 * kMiB);
  rig.AddVolume("disk1", 4 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  // The receiver runs behind cut_stream.py N when the cut file holds a number.
  BLKREP_REQUIRE_PROGRAM(python, "python3");
  std::string cut_file = rig.dir().File("cut");
  std::ofstream(cut_file) << "all";
  ASSERT_TRUE(AddCuttableTarget(rig, "local", python, cut_file));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x10 0 2M"}));
  ASSERT_FALSE(rig.Run("vm100-1").is_null());
  rig.ExpectReplicasEqualSources();

  // 6 MiB + 2 MiB changed, sent uncompressed so the stream is that long.
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x21 1M 3M", "write -P 0x22 5M 3M"}));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk1", {"write -P 0x23 1M 2M"}));
  const std::uint64_t changed_blocks = 8 * kMiB / kBlockBytes;
  const auto previous = Snapshot(rig.replica_dir(), /*images_only=*/true);

  std::mt19937_64 random(20261121);
  // Each run resends only what is not staged yet, so its stream is shorter
  // than the last one's; cuts under 1 MiB stay inside every run's stream
  // (six of them stage at most 6 of the 8 MiB).
  std::vector<std::uint64_t> cuts = {0, 1, 23, 24, 200, 4096};
  for (int i = 0; i < 6; ++i) cuts.push_back(8192 + random() % kMiB);
  std::uint64_t fails = 0;
  for (std::uint64_t cut : cuts) {
    SCOPED_TRACE("cut at byte " + std::to_string(cut));
    std::ofstream(cut_file, std::ios::trunc) << cut;
    RunResult r = rig.Blkrep({"run", "--id", "vm100-1", "--zstd-level", "0", "--batch-size", "256K"});
    EXPECT_EQ(r.exit_status, 1) << Describe(r);
    std::vector<std::string> lines = Lines(r.err);
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines.back().rfind("blkrep: error: job vm100-1", 0), 0u) << r.err;
    EXPECT_EQ(Snapshot(rig.replica_dir(), true), previous) << "the replica changed";
    json st = rig.Status("vm100-1");
    EXPECT_EQ(st["state"], "error");
    EXPECT_EQ(st["fail_count"], ++fails);
  }
  std::ofstream(cut_file, std::ios::trunc) << "all";
  json done = rig.Run("vm100-1", {"--zstd-level", "0", "--batch-size", "256K"});
  ASSERT_FALSE(done.is_null());
  EXPECT_EQ(done["mode"], "incremental");
  EXPECT_EQ(done["blocks_sent"], changed_blocks);
  // Resumed: what the cut runs left staged was kept, not sent again.
  EXPECT_GT(done["kept_blocks"].get<std::uint64_t>(), 0u);
  EXPECT_LT(done["data_blocks"].get<std::uint64_t>(), changed_blocks);
  EXPECT_LT(done["raw_bytes"].get<std::uint64_t>(), changed_blocks * kBlockBytes);
  EXPECT_EQ(rig.Status("vm100-1")["fail_count"], 0);
  rig.ExpectReplicasEqualSources();
}

TEST(ReplicationFaultsTest, ACutFirstFullCycleResumesInPlace) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  BLKREP_REQUIRE_PROGRAM(python, "python3");
  Rig rig;
  rig.AddVolume("disk0", 8 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x51 0 8M"}));
  std::string cut_file = rig.dir().File("cut");
  std::ofstream(cut_file) << 3 * kMiB;
  ASSERT_TRUE(AddCuttableTarget(rig, "local", python, cut_file));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  RunResult cut = rig.Blkrep({"run", "--id", "vm100-1", "--zstd-level", "0", "--batch-size", "256K"});
  EXPECT_EQ(cut.exit_status, 1) << Describe(cut);
  // The replica is marked incomplete: nothing may treat it as a cycle.
  auto state = receiver::ReadGuestState(rig.replica_dir(), kGuest);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_TRUE(state->volumes[0].incomplete);
  EXPECT_EQ(state->volumes[0].committed_epoch, 0u);
  std::ofstream(cut_file, std::ios::trunc) << "all";
  json done = rig.Run("vm100-1", {"--zstd-level", "0", "--batch-size", "256K"});
  ASSERT_FALSE(done.is_null());
  EXPECT_EQ(done["mode"], "full");
  EXPECT_EQ(done["blocks_sent"], 8 * kMiB / kBlockBytes);
  EXPECT_GT(done["kept_blocks"].get<std::uint64_t>(), 0u) << done.dump();
  EXPECT_LT(done["raw_bytes"].get<std::uint64_t>(), 8 * kMiB) << done.dump();
  rig.ExpectReplicasEqualSources();
  state = receiver::ReadGuestState(rig.replica_dir(), kGuest);
  ASSERT_TRUE(state.ok());
  EXPECT_FALSE(state->volumes[0].incomplete);
}

// A recorded incremental stream and the replica directory it applies to.
class CorruptStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    qemu_io_ = FindProgram("qemu-io");
    if (qemu_io_.empty()) GTEST_SKIP() << "qemu-io is not installed (Debian: qemu-utils)";
    rig_.AddVolume("disk0", 2 * kMiB);
    rig_.AddVolume("disk1", 1 * kMiB);
    ASSERT_TRUE(rig_.StartTracker());
    record_ = rig_.dir().File("stream.bin");
    ASSERT_TRUE(rig_.AddLocalTarget("local", "tee " + ShellQuote(record_) + " | "));
    ASSERT_TRUE(rig_.CreateJob("vm100-1", "local"));
    ASSERT_TRUE(rig_.QemuIo(qemu_io_, "disk0", {"write -P 0x31 0 1M"}));
    ASSERT_FALSE(rig_.Run("vm100-1").is_null());
    // The replica before the recorded cycle.
    before_ = rig_.dir().File("before");
    CopyTree(rig_.replica_dir(), before_);
    ForgetReplicaIdentities(before_ + "/" + kGuest);
    ASSERT_TRUE(rig_.QemuIo(qemu_io_, "disk0", {"write -P 0x32 64K 256K"}));
    ASSERT_TRUE(rig_.QemuIo(qemu_io_, "disk1", {"write -P 0x33 0 128K"}));
    ASSERT_FALSE(rig_.Run("vm100-1").is_null());
    stream_ = ReadAll(record_);
    ASSERT_GT(stream_.size(), 1000u);
  }

  // Feeds `bytes` to `blkrep receive --stdio` on a fresh copy of the
  // replica before the cycle; checks the outcome.
  void ExpectRefused(const std::vector<std::uint8_t>& bytes, const std::string& what,
                     const std::string& message_part = "") {
    SCOPED_TRACE(what);
    std::string dir = rig_.dir().File("try");
    CopyTree(before_, dir);
    auto snapshot = Snapshot(dir);
    std::string input = rig_.dir().File("input.bin");
    { std::ofstream(input, std::ios::trunc | std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())); }
    RunResult r = RunProgram(rig_.dir(), {"/bin/sh", "-c",
                                          ShellQuote(BlkrepBinary()) + " receive --stdio --replica-dir " +
                                              ShellQuote(dir) + " < " + ShellQuote(input) + " > /dev/null"});
    EXPECT_TRUE(r.exit_status == 1 || r.exit_status == 2) << Describe(r);
    std::vector<std::string> lines = Lines(r.err);
    EXPECT_EQ(lines.size(), 1u) << r.err;
    if (!lines.empty()) {
      EXPECT_EQ(lines[0].rfind("blkrep: error: ", 0), 0u) << r.err;
      if (!message_part.empty()) {
        EXPECT_NE(lines[0].find(message_part), std::string::npos) << lines[0];
      }
    }
    EXPECT_EQ(Snapshot(dir, /*images_only=*/true), Snapshot(before_, true)) << "the replica changed";
  }

  Rig rig_;
  std::string qemu_io_;
  std::string record_;
  std::string before_;
  std::vector<std::uint8_t> stream_;
};

TEST_F(CorruptStreamTest, TheUnmodifiedStreamCommits) {
  std::string dir = rig_.dir().File("control");
  CopyTree(before_, dir);
  RunResult r = RunProgram(rig_.dir(), {"/bin/sh", "-c",
                                        ShellQuote(BlkrepBinary()) + " receive --stdio --replica-dir " +
                                            ShellQuote(dir) + " < " + ShellQuote(record_) + " > /dev/null"});
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  EXPECT_EQ(Snapshot(dir, true).size(), 2u);
  for (const auto& v : rig_.volumes()) {
    EXPECT_EQ(Checksum(dir + "/" + kGuest + "/" + v.name + ".img"), Checksum(v.path)) << v.name;
  }
}

TEST_F(CorruptStreamTest, BitFlipsAnywhereAreRefused) {
  std::mt19937_64 random(7);
  for (int i = 0; i < 12; ++i) {
    std::vector<std::uint8_t> bytes = stream_;
    std::size_t at = random() % bytes.size();
    bytes[at] ^= static_cast<std::uint8_t>(1U << (random() % 8));
    ExpectRefused(bytes, "bit flip at byte " + std::to_string(at));
  }
}

TEST_F(CorruptStreamTest, TruncationAnywhereIsRefused) {
  std::mt19937_64 random(8);
  std::vector<std::size_t> cuts = {0, 1, 23, 24, 25, stream_.size() - 1};
  for (int i = 0; i < 8; ++i) cuts.push_back(random() % stream_.size());
  for (std::size_t cut : cuts) {
    ExpectRefused(std::vector<std::uint8_t>(stream_.begin(), stream_.begin() + static_cast<long>(cut)),
                  "truncated to " + std::to_string(cut) + " bytes");
  }
}

TEST_F(CorruptStreamTest, GarbageIsRefused) {
  ExpectRefused(RandomBytes(100000, 3), "random bytes", "magic");
  std::vector<std::uint8_t> text(5000, 'A');
  ExpectRefused(text, "text", "magic");
}

// Frames with valid checksums that lie: written with the real FrameWriter.
class CraftedStream {
 public:
  explicit CraftedStream(const std::string& path) : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600)),
                                                   stream_(fd_, fd_, true), writer_(stream_) {}
  template <typename M>
  void Send(proto::FrameType type, const M& m) {
    ASSERT_TRUE(writer_.Send(type, m).ok());
  }

 private:
  int fd_;
  proto::FdStream stream_;
  proto::FrameWriter writer_;
};

TEST_F(CorruptStreamTest, HugeLengthsOffsetsPastTheEndAndAWrongVolumeSizeAreRefused) {
  auto state = receiver::ReadGuestState(before_, kGuest);
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  auto hello = [&](std::uint64_t size0) {
    proto::Hello h;
    h.set_protocol_version(proto::kProtocolVersion);
    h.set_min_protocol_version(proto::kProtocolVersion);
    h.set_guest(kGuest);
    h.set_job("vm100-1");
    std::uint64_t sizes[] = {size0, 1 * kMiB};
    for (int i = 0; i < 2; ++i) {
      proto::VolumeInfo* v = h.add_volumes();
      v->set_name(i == 0 ? "disk0" : "disk1");
      v->set_size_bytes(sizes[i]);
      v->set_block_size_bytes(kBlockBytes);
    }
    return h;
  };
  auto begin = [&](std::uint64_t blocks) {
    proto::CycleBegin b;
    b.set_cycle_id(99);
    b.set_mode(proto::CYCLE_MODE_INCREMENTAL);
    proto::VolumeCycle* v = b.add_volumes();
    v->set_volume(0);
    std::uint64_t committed = state->volumes[0].committed_epoch;
    v->set_base_epoch(committed);
    v->set_epoch(committed + 5);
    v->set_block_count(blocks);
    return b;
  };
  std::string path = rig_.dir().File("crafted.bin");

  // A header announcing a 4 GiB body.
  {
    std::vector<std::uint8_t> bytes = stream_;
    bytes[8] = bytes[9] = bytes[10] = bytes[11] = 0xff;
    ExpectRefused(bytes, "huge length", "exceeds the cap");
  }
  // BLOCKS past the end of the volume.
  {
    CraftedStream s(path);
    s.Send(proto::FrameType::kHello, hello(2 * kMiB));
    s.Send(proto::FrameType::kCycleBegin, begin(1));
    proto::Blocks b;
    b.set_volume(0);
    b.set_first_block(2 * kMiB / kBlockBytes);  // one past the last block
    b.set_block_count(1);
    b.set_raw_length(kBlockBytes);
    b.set_payload(std::string(kBlockBytes, 'x'));
    b.add_hashes(1);
    s.Send(proto::FrameType::kBlocks, b);
  }
  ExpectRefused(ReadAll(path), "offset past the end", "past the end");
  // ZEROES far past the end.
  {
    CraftedStream s(path);
    s.Send(proto::FrameType::kHello, hello(2 * kMiB));
    s.Send(proto::FrameType::kCycleBegin, begin(1));
    proto::Zeroes z;
    z.set_volume(0);
    z.set_first_block(1ULL << 50);
    z.set_block_count(1);
    s.Send(proto::FrameType::kZeroes, z);
  }
  ExpectRefused(ReadAll(path), "zero range past the end", "past the end");
  // The source claims another size than the replica has.
  {
    CraftedStream s(path);
    s.Send(proto::FrameType::kHello, hello(3 * kMiB));
    s.Send(proto::FrameType::kCycleBegin, begin(1));
  }
  ExpectRefused(ReadAll(path), "wrong volume size", "has 2097152 bytes, the volume 3145728");
}

// `blkrep receive --listen 127.0.0.1:0 ...` for `rig`; the address it
// bound, from its first line on stderr (empty on failure).
std::string StartListener(Rig& rig, Process& receiver, std::vector<std::string> auth) {
  std::vector<std::string> argv = {BlkrepBinary(), "receive", "--listen", "127.0.0.1:0", "--replica-dir",
                                   rig.replica_dir()};
  argv.insert(argv.end(), auth.begin(), auth.end());
  if (!receiver.Start(argv, rig.dir().File("receiver.out"), rig.dir().File("receiver.err"))) return "";
  for (int i = 0; i < 500; ++i) {
    std::string err = receiver.err();
    std::size_t at = err.find("receiving on ");
    if (at != std::string::npos && err.find(" into ", at) != std::string::npos) {
      return err.substr(at + 13, err.find(" into ", at) - at - 13);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "the receiver did not listen: " << receiver.err();
  return "";
}

TEST(ReplicationTransportTest, TcpWithAPreSharedKeyReplicatesAndAWrongKeyIsRefused) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x61 0 512K"}));
  std::string key = rig.dir().File("key"), wrong = rig.dir().File("wrong");
  for (const auto& [path, seed] : {std::pair{key, 1u}, std::pair{wrong, 2u}}) {
    auto bytes = RandomBytes(32, seed);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), 32);
    ::chmod(path.c_str(), 0600);
  }
  Process receiver;
  std::string address = StartListener(rig, receiver, {"--psk-file", key});
  ASSERT_FALSE(address.empty());
  ASSERT_TRUE(rig.AddTarget("tcp", {"--connect", address, "--psk-file", key}));
  ASSERT_TRUE(rig.AddTarget("intruder", {"--connect", address, "--psk-file", wrong}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "tcp"));
  ASSERT_TRUE(rig.CreateJob("vm100-2", "intruder"));
  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "full");
  rig.ExpectReplicasEqualSources();
  RunResult refused = rig.Blkrep({"run", "--id", "vm100-2"});
  EXPECT_EQ(refused.exit_status, 1) << Describe(refused);
  EXPECT_NE(refused.err.find("key"), std::string::npos) << refused.err;
  receiver.Signal(SIGTERM);
  EXPECT_EQ(receiver.Wait(std::chrono::seconds(10)).value_or(-1), 0) << receiver.err();
  EXPECT_NE(receiver.err().find("blkrep: warning:"), std::string::npos) << receiver.err();
}

TEST(ReplicationTransportTest, TcpWithMutualTlsReplicatesAndAForeignCertificateIsRefused) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  BLKREP_REQUIRE_PROGRAM(openssl, "openssl");
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  rig.AddVolume("disk1", 32 * kMiB);
  ASSERT_TRUE(rig.StartTracker());
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk0", {"write -P 0x62 0 256K"}));
  ASSERT_TRUE(rig.QemuIo(qemu_io, "disk1", {"write -P 0x63 0 32M"}));
  const std::string d = rig.dir().File("pki");
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  auto ca = [&](const std::string& name) {
    return openssl + " req -x509" + ec + " -keyout " + d + "/" + name + ".key -out " + d + "/" + name +
           ".crt -days 2 -subj /CN=" + name;
  };
  auto leaf = [&](const std::string& name, const std::string& issuer, const std::string& san) {
    return "printf '%s\\n' 'subjectAltName=" + san + "' > " + d + "/" + name + ".ext && " + openssl + " req" + ec +
           " -keyout " + d + "/" + name + ".key -out " + d + "/" + name + ".csr -subj /CN=" + name + " && " +
           openssl + " x509 -req -in " + d + "/" + name + ".csr -CA " + d + "/" + issuer + ".crt -CAkey " + d + "/" +
           issuer + ".key -CAcreateserial -days 2 -extfile " + d + "/" + name + ".ext -out " + d + "/" + name + ".crt";
  };
  std::string script = "mkdir -p " + d + " && " + ca("ca") + " && " + ca("other") + " && " +
                       leaf("server", "ca", "IP:127.0.0.1") + " && " + leaf("client", "ca", "DNS:client") + " && " +
                       leaf("rogue", "other", "DNS:client");
  ASSERT_EQ(std::system(("(" + script + ") > " + rig.dir().File("openssl.log") + " 2>&1").c_str()), 0)
      << Slurp(rig.dir().File("openssl.log"));
  Process receiver;
  std::string address = StartListener(
      rig, receiver, {"--tls-cert", d + "/server.crt", "--tls-key", d + "/server.key", "--tls-ca", d + "/ca.crt"});
  ASSERT_FALSE(address.empty());
  ASSERT_TRUE(rig.AddTarget("tls", {"--connect", address, "--tls-ca", d + "/ca.crt", "--tls-cert",
                                    d + "/client.crt", "--tls-key", d + "/client.key"}));
  ASSERT_TRUE(rig.AddTarget("rogue", {"--connect", address, "--tls-ca", d + "/ca.crt", "--tls-cert",
                                      d + "/rogue.crt", "--tls-key", d + "/rogue.key"}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "tls"));
  ASSERT_TRUE(rig.CreateJob("vm100-2", "rogue"));
  json r = rig.Run("vm100-1");
  EXPECT_EQ(r["mode"], "full");
  rig.ExpectReplicasEqualSources();
  RunResult refused = rig.Blkrep({"run", "--id", "vm100-2"});
  EXPECT_EQ(refused.exit_status, 1) << Describe(refused);
  EXPECT_EQ(rig.Status("vm100-2")["state"], "error");
  // Resyncs over TLS: the receiver's hash stream and the shipper's blocks
  // cross on one TLS session from two threads each side (a regression: an
  // SSL object used from two threads failed about one resync in three on
  // larger volumes; this test does not reliably reproduce that race).
  for (int round = 0; round < 3; ++round) {
    {
      std::fstream replica(rig.ReplicaPath("disk1"), std::ios::in | std::ios::out | std::ios::binary);
      for (std::uint64_t b = round; b < 8192; b += 512) {
        replica.seekp(static_cast<std::streamoff>(b * kBlockBytes));
        replica.write("damaged", 7);
      }
    }
    RunResult resync = rig.Blkrep({"resync", "vm100-1", "--now", "--json"});
    ASSERT_EQ(resync.exit_status, 0) << "round " << round << ": " << Describe(resync);
    json report = json::parse(resync.out, nullptr, false);
    ASSERT_TRUE(report.is_array() && report.size() == 1) << resync.out;
    EXPECT_EQ(report[0]["mode"], "resync");
    EXPECT_EQ(report[0]["blocks_sent"], 16) << "round " << round;
    rig.ExpectReplicasEqualSources();
  }
  receiver.Signal(SIGTERM);
  EXPECT_EQ(receiver.Wait(std::chrono::seconds(10)).value_or(-1), 0) << receiver.err();
}

}  // namespace
}  // namespace blkrep::jobs::test
