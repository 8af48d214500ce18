// Failover and the way back, through the command line: a guest replicated
// from node A to node B; B promotes its replica and the guest writes there;
// A (which wrote after the last cycle too) is demoted; the job reversed from
// B ships exactly the union of both sides' changes since their last common
// cycle, and both sides end byte for byte equal. Each node is a Rig of its
// own (state directory, replica directory).
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

std::string At(std::uint64_t block) { return std::to_string(block * kBlockBytes); }
std::string Blocks(std::uint64_t n) { return std::to_string(n * kBlockBytes); }

// qemu-io writes of `pattern` on [first, first + count) of each range.
std::vector<std::string> Writes(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges, int pattern) {
  std::vector<std::string> out;
  for (auto [first, count] : ranges) out.push_back("write -P " + std::to_string(pattern) + " " + At(first) + " " + Blocks(count));
  return out;
}

void AddBlocks(std::set<std::uint64_t>& set, const std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges) {
  for (auto [first, count] : ranges) {
    for (std::uint64_t b = first; b < first + count; ++b) set.insert(b);
  }
}

TEST(FailoverTest, PromoteWriteDemoteAndReverseShipsOnlyTheUnionOfBothSidesChanges) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  const std::string job = std::string(kGuest) + "-0";
  Rig a;  // the source node
  Rig b;  // the target node
  a.AddVolume("disk0", 16 * kMiB);
  a.AddVolume("disk1", 8 * kMiB);
  ASSERT_TRUE(a.StartTracker());
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 12M"}));
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk1", {"write -P 0x12 0 8M"}));
  ASSERT_TRUE(a.AddTarget("nodeB", {"--exec", b.ReceiveCommand()}));
  ASSERT_TRUE(a.CreateJob(job, "nodeB"));
  ASSERT_EQ(a.Run(job)["mode"], "full");
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk0", Writes({{100, 10}}, 0x21)));
  ASSERT_EQ(a.Run(job)["mode"], "incremental");

  // A writes after the last cycle; the cycle never comes (A is shut down:
  // a migration; after a crash its journal would name whole activity-log
  // extents instead, a superset).
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> a_disk0 = {{1000, 8}, {2000, 4}};
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> a_disk1 = {{50, 3}};
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk0", Writes(a_disk0, 0x31)));
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk1", Writes(a_disk1, 0x32)));
  ASSERT_EQ(a.tracker().Stop(SIGTERM), std::optional<int>(0));
  // What A's journal says changed since the common cycle: exactly A's writes.
  json inspected = Inspect(a.dir(), a.state_dir());
  for (const auto& [name, ranges] : {std::pair{"disk0", a_disk0}, std::pair{"disk1", a_disk1}}) {
    std::set<std::uint64_t> written;
    AddBlocks(written, ranges);
    const json& vol = VolumeReport(inspected, name);
    ASSERT_TRUE(vol.contains("targets") && vol["targets"].size() == 1) << vol.dump();
    EXPECT_EQ(BlocksOfRanges(vol["targets"][0]["dirty_ranges"]), written) << name;
  }

  // Failover: B promotes its replica and serves it; the guest writes there,
  // partly over what A wrote.
  RunResult promoted = b.Blkrep({"promote", kGuest, "--replica-dir", b.replica_dir(), "--json"});
  ASSERT_EQ(promoted.exit_status, 0) << Describe(promoted);
  json p = json::parse(promoted.out);
  EXPECT_EQ(p["job"], job);
  ASSERT_EQ(p["volumes"].size(), 2u);
  Tracker tb(b.dir(), {{"disk0", b.ReplicaPath("disk0")}, {"disk1", b.ReplicaPath("disk1")}});
  ASSERT_TRUE(tb.Start());
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> b_disk0 = {{1004, 8}, {3000, 2}};
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> b_disk1 = {{1500, 5}};
  for (const auto& [name, ranges, pattern] :
       {std::tuple{"disk0", b_disk0, 0x41}, std::tuple{"disk1", b_disk1, 0x42}}) {
    std::vector<std::string> argv = {qemu_io, "-f", "raw"};
    for (const auto& c : Writes(ranges, pattern)) {
      argv.push_back("-c");
      argv.push_back(c);
    }
    argv.push_back(tb.Uri(name));
    RunResult r = RunProgram(b.dir(), argv);
    ASSERT_EQ(r.exit_status, 0) << Describe(r);
  }

  // A's old job can no longer overwrite the promoted replica (split brain).
  RunResult stale = a.Blkrep({"run", "--id", job});
  EXPECT_EQ(stale.exit_status, 1) << Describe(stale);
  EXPECT_NE(stale.err.find("promoted"), std::string::npos) << stale.err;

  // A job the journals do not know is refused, and nothing changes.
  RunResult typo = a.Blkrep({"demote", kGuest, "--replica-dir", a.replica_dir(), "--job", "vm100-9"});
  EXPECT_EQ(typo.exit_status, 1) << Describe(typo);
  EXPECT_NE(typo.err.find("no replication job vm100-9"), std::string::npos) << typo.err;

  // A becomes the replica of the job; B reverses it.
  RunResult demoted = a.Blkrep({"demote", kGuest, "--replica-dir", a.replica_dir(), "--json"});
  ASSERT_EQ(demoted.exit_status, 0) << Describe(demoted);
  json d = json::parse(demoted.out);
  std::uint64_t diverged = 0;
  for (const auto& v : d["volumes"]) diverged += v["diverged_blocks"].get<std::uint64_t>();
  EXPECT_EQ(diverged, 8u + 4u + 3u);
  // A's job has no source any more: disabled, a bare run leaves it alone.
  ASSERT_EQ(d["disabled_jobs"].size(), 1u) << d.dump();
  EXPECT_EQ(d["disabled_jobs"][0], job);
  EXPECT_EQ(a.Status(job)["enabled"], false);
  ASSERT_TRUE(b.AddTarget("nodeA", {"--exec", a.ReceiveCommand()}));
  ASSERT_TRUE(b.CreateJob(job, "nodeA"));
  json reverse = b.Run(job);
  ASSERT_FALSE(reverse.is_null());
  EXPECT_EQ(reverse["mode"], "incremental") << reverse.dump();
  std::set<std::uint64_t> union0, union1;
  AddBlocks(union0, a_disk0);
  AddBlocks(union0, b_disk0);
  AddBlocks(union1, a_disk1);
  AddBlocks(union1, b_disk1);
  const std::uint64_t expected = union0.size() + union1.size();
  EXPECT_EQ(reverse["blocks_sent"].get<std::uint64_t>(), expected);
  // Every block of the union holds data on B (nothing is zero): all of it
  // travels as data, and nothing else does.
  EXPECT_EQ(reverse["data_blocks"].get<std::uint64_t>(), expected);
  EXPECT_EQ(reverse["raw_bytes"].get<std::uint64_t>(), expected * kBlockBytes) << reverse.dump();
  EXPECT_LT(reverse["raw_bytes"].get<std::uint64_t>(), (16 + 8) * kMiB / 100);

  // Both nodes hold the same bytes: B's volumes (the promoted replicas) and
  // A's own volumes (now the replica, reached through its symlinks).
  for (const auto& v : a.volumes()) {
    std::vector<std::uint8_t> on_a = ReadAll(v.path);
    std::vector<std::uint8_t> on_b = ReadAll(b.ReplicaPath(v.name));
    ASSERT_EQ(on_a.size(), on_b.size()) << v.name;
    EXPECT_TRUE(on_a == on_b) << v.name << " differs in blocks " << Difference({}, ChangedBlocks(on_a, on_b));
  }

  // The diverged blocks are shipped once: the next reverse cycle carries
  // only what B wrote since.
  std::vector<std::string> argv = {qemu_io, "-f", "raw", "-c", "write -P 0x51 " + At(7) + " " + Blocks(1), tb.Uri("disk0")};
  RunResult w = RunProgram(b.dir(), argv);
  ASSERT_EQ(w.exit_status, 0) << Describe(w);
  json next = b.Run(job);
  EXPECT_EQ(next["mode"], "incremental");
  EXPECT_EQ(next["blocks_sent"], 1);
  ASSERT_EQ(tb.Stop(SIGTERM), std::optional<int>(0));
  EXPECT_TRUE(ReadAll(a.volumes()[0].path) == ReadAll(b.ReplicaPath("disk0")));

  // Failback: A promotes (its own volumes, the replica of the reversed
  // job), B is demoted, A's job is reversed again: nothing was written
  // since, so nothing but an empty incremental travels.
  RunResult back = a.Blkrep({"promote", kGuest, "--replica-dir", a.replica_dir()});
  ASSERT_EQ(back.exit_status, 0) << Describe(back);
  RunResult b_down = b.Blkrep({"demote", kGuest, "--replica-dir", b.replica_dir()});
  ASSERT_EQ(b_down.exit_status, 0) << Describe(b_down);
  ASSERT_TRUE(a.StartTracker());
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk1", Writes({{9, 2}}, 0x61)));
  // demote disabled A's job; the operator enables it again.
  EXPECT_EQ(a.Status(job)["enabled"], false);
  RunResult enabled = a.Blkrep({"enable", job});
  ASSERT_EQ(enabled.exit_status, 0) << Describe(enabled);
  json failback = a.Run(job);
  ASSERT_FALSE(failback.is_null());
  EXPECT_EQ(failback["mode"], "incremental") << failback.dump();
  EXPECT_EQ(failback["blocks_sent"], 2) << failback.dump();
  for (const auto& v : a.volumes()) EXPECT_TRUE(ReadAll(v.path) == ReadAll(b.ReplicaPath(v.name))) << v.name;
}

// A failover called off before any cycle of the reversed job: B is demoted
// again and A promoted again; the next cycle from A ships what A wrote after
// the common cycle (kept through its own demotion as diverged blocks, then
// in its new journal) and what B wrote meanwhile, and both sides match.
TEST(FailoverTest, AFailoverCalledOffShipsBothSidesChangesWhenItIsUndone) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  const std::string job = std::string(kGuest) + "-0";
  Rig a;
  Rig b;
  a.AddVolume("disk0", 8 * kMiB);
  ASSERT_TRUE(a.StartTracker());
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk0", {"write -P 0x11 0 8M"}));
  ASSERT_TRUE(a.AddTarget("nodeB", {"--exec", b.ReceiveCommand()}));
  ASSERT_TRUE(a.CreateJob(job, "nodeB"));
  ASSERT_EQ(a.Run(job)["mode"], "full");
  ASSERT_TRUE(a.QemuIo(qemu_io, "disk0", Writes({{10, 4}}, 0x21)));  // never shipped
  ASSERT_EQ(a.tracker().Stop(SIGTERM), std::optional<int>(0));

  ASSERT_EQ(b.Blkrep({"promote", kGuest, "--replica-dir", b.replica_dir()}).exit_status, 0);
  Tracker tb(b.dir(), {{"disk0", b.ReplicaPath("disk0")}});
  ASSERT_TRUE(tb.Start());
  RunResult w = RunProgram(b.dir(), {qemu_io, "-f", "raw", "-c", Writes({{12, 4}}, 0x31)[0], tb.Uri("disk0")});
  ASSERT_EQ(w.exit_status, 0) << Describe(w);
  ASSERT_EQ(a.Blkrep({"demote", kGuest, "--replica-dir", a.replica_dir()}).exit_status, 0);

  // Called off: back to A.
  ASSERT_EQ(tb.Stop(SIGTERM), std::optional<int>(0));
  RunResult b_down = b.Blkrep({"demote", kGuest, "--replica-dir", b.replica_dir()});
  ASSERT_EQ(b_down.exit_status, 0) << Describe(b_down);
  RunResult a_up = a.Blkrep({"promote", kGuest, "--replica-dir", a.replica_dir(), "--json"});
  ASSERT_EQ(a_up.exit_status, 0) << Describe(a_up);
  ASSERT_TRUE(a.StartTracker());
  ASSERT_EQ(a.Blkrep({"enable", job}).exit_status, 0);
  json r = a.Run(job);
  EXPECT_EQ(r["mode"], "incremental") << r.dump();
  EXPECT_EQ(r["blocks_sent"], 6) << r.dump();  // blocks 10-15: A's 10-13, B's 12-15
  EXPECT_TRUE(ReadAll(a.volumes()[0].path) == ReadAll(b.ReplicaPath("disk0")));
}

TEST(FailoverTest, PromoteRefusesAReplicaThatHoldsNoCompleteCycleAndDemoteRefusesARunningTracker) {
  Rig a;
  a.AddVolume("disk0", 4 * kMiB);
  ASSERT_TRUE(a.StartTracker());
  RunResult none = a.Blkrep({"promote", kGuest, "--replica-dir", a.replica_dir()});
  EXPECT_EQ(none.exit_status, 1) << Describe(none);
  EXPECT_NE(none.err.find("no replica"), std::string::npos) << none.err;
  RunResult running = a.Blkrep({"demote", kGuest, "--replica-dir", a.replica_dir()});
  EXPECT_EQ(running.exit_status, 1) << Describe(running);
  EXPECT_NE(running.err.find("tracker serves"), std::string::npos) << running.err;
  RunResult usage = a.Blkrep({"promote"});
  EXPECT_EQ(usage.exit_status, 2) << Describe(usage);
}


// Promote checks every replica before it makes anything: a wrong-sized one
// leaves no journal and no fence behind, and once repaired promote runs.
TEST(FailoverTest, APromoteThatFailsLeavesNothingBehindAndCanBeRunAgain) {
  BLKREP_REQUIRE_PROGRAM(qemu_io, "qemu-io");
  const std::string job = std::string(kGuest) + "-0";
  Rig a;
  Rig b;
  a.AddVolume("disk0", 2 * kMiB);
  a.AddVolume("disk1", 2 * kMiB);
  ASSERT_TRUE(a.StartTracker());
  ASSERT_TRUE(a.AddTarget("nodeB", {"--exec", b.ReceiveCommand()}));
  ASSERT_TRUE(a.CreateJob(job, "nodeB"));
  ASSERT_EQ(a.Run(job)["mode"], "full");
  ASSERT_EQ(::truncate(b.ReplicaPath("disk1").c_str(), 3 * kMiB), 0);
  RunResult failed = b.Blkrep({"promote", kGuest, "--replica-dir", b.replica_dir()});
  EXPECT_EQ(failed.exit_status, 1) << Describe(failed);
  EXPECT_FALSE(std::filesystem::exists(b.state_dir() + "/journal/" + kGuest + "/disk0.journal"));
  EXPECT_FALSE(std::filesystem::exists(b.replica_dir() + "/" + kGuest + "/promoted"));
  ASSERT_EQ(::truncate(b.ReplicaPath("disk1").c_str(), 2 * kMiB), 0);
  RunResult again = b.Blkrep({"promote", kGuest, "--replica-dir", b.replica_dir()});
  EXPECT_EQ(again.exit_status, 0) << Describe(again);
}
}  // namespace
}  // namespace blkrep::jobs::test
