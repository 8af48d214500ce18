// The systemd units shipped in docs/systemd: blkrep-run.service and
// blkrep-run.timer (the scheduler: a bare `blkrep run` every minute).
// `systemd-analyze verify` checks them where it exists (the test is skipped,
// saying so, where it does not), and the service's ExecStart command line,
// with its Environment, is run against the built blkrep on an empty state
// directory: it must be accepted and exit 0.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/tracker/nbd_test_util.h"

namespace blkrep::tools {
namespace {

using namespace blkrep::tracker::nbd_test;  // NOLINT: process helpers

constexpr const char* kInstalledBinary = "/usr/local/bin/blkrep";

std::string UnitPath(const std::string& name) { return std::string(BLKREP_SOURCE_DIR) + "/docs/systemd/" + name; }

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The values of `key=` lines, in order.
std::vector<std::string> Values(const std::string& unit, const std::string& key) {
  std::vector<std::string> out;
  std::istringstream in(unit);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + "=", 0) == 0) out.push_back(line.substr(key.size() + 1));
  }
  return out;
}

std::vector<std::string> Words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// The unit text with the installed binary's path replaced by the built one.
std::string WithBuiltBinary(std::string unit) {
  for (std::size_t at; (at = unit.find(kInstalledBinary)) != std::string::npos;) {
    unit.replace(at, std::string(kInstalledBinary).size(), BlkrepBinary());
  }
  return unit;
}

TEST(SystemdUnitsTest, RunServiceAndTimerSayWhatTheScheduleNeeds) {
  std::string service = ReadText(UnitPath("blkrep-run.service"));
  std::string timer = ReadText(UnitPath("blkrep-run.timer"));
  EXPECT_EQ(Values(service, "Type"), std::vector<std::string>{"oneshot"});
  ASSERT_EQ(Values(service, "ExecStart").size(), 1u);
  EXPECT_EQ(Words(Values(service, "ExecStart")[0]), (std::vector<std::string>{kInstalledBinary, "run"}));
  EXPECT_EQ(Values(timer, "OnCalendar"), std::vector<std::string>{"minutely"});
  EXPECT_EQ(Values(timer, "AccuracySec"), std::vector<std::string>{"1s"});
  EXPECT_EQ(Values(timer, "Persistent"), std::vector<std::string>{"false"});
  EXPECT_EQ(Values(timer, "Unit"), std::vector<std::string>{"blkrep-run.service"});
  // The hardening must leave the state directory and the volumes reachable.
  EXPECT_TRUE(Values(service, "ProtectSystem") == std::vector<std::string>{"full"});
  EXPECT_TRUE(Values(service, "PrivateDevices").empty()) << "volumes may be block devices";
}

TEST(SystemdUnitsTest, ExecStartOfTheRunServiceIsAcceptedByBlkrep) {
  TempDir dir;
  std::string service = ReadText(UnitPath("blkrep-run.service"));
  ASSERT_EQ(Values(service, "ExecStart").size(), 1u);
  std::vector<std::string> argv = {"/usr/bin/env"};
  for (const std::string& e : Values(service, "Environment")) {
    // The state directory of the unit, moved into the test's directory.
    argv.push_back(e.rfind("BLKREP_STATE_DIR=", 0) == 0 ? "BLKREP_STATE_DIR=" + dir.File("state") : e);
  }
  ASSERT_GT(argv.size(), 1u) << "the service sets no BLKREP_STATE_DIR";
  for (const std::string& w : Words(WithBuiltBinary(Values(service, "ExecStart")[0]))) argv.push_back(w);
  RunResult r = RunProgram(dir, argv);
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  EXPECT_EQ(r.err, "") << Describe(r);
  // It used the unit's state directory: the job database is there.
  EXPECT_EQ(::access(dir.File("state/blkrep.db").c_str(), F_OK), 0) << Describe(r);
}

TEST(SystemdUnitsTest, SystemdAnalyzeVerifiesTheUnits) {
  std::string analyze = FindProgram("systemd-analyze");
  if (analyze.empty()) GTEST_SKIP() << "systemd-analyze is not installed: the units are not verified by systemd";
  TempDir dir;
  // Verified as shipped but for the binary's path (verify requires the
  // command to exist).
  for (const char* name : {"blkrep-run.service", "blkrep-run.timer"}) {
    std::string text = WithBuiltBinary(ReadText(UnitPath(name)));
    std::ofstream(dir.File(name)) << text;
  }
  RunResult r = RunProgram(dir, {analyze, "verify", dir.File("blkrep-run.service"), dir.File("blkrep-run.timer")});
  if (r.exit_status != 0 && r.err.find("blkrep-run") == std::string::npos) {
    GTEST_SKIP() << "systemd-analyze verify does not work here: " << Describe(r);
  }
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  // Unknown keys and bad values are warnings that still exit 0.
  std::istringstream err(r.err);
  for (std::string line; std::getline(err, line);) {
    EXPECT_EQ(line.find("blkrep-run"), std::string::npos) << "systemd-analyze: " << line;
  }
}

}  // namespace
}  // namespace blkrep::tools
