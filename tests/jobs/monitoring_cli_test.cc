// Monitoring through the command line, the way an operator uses it: real
// cycles (`journal write` through the tracking layer, `run --id --json` to a
// local receiver), then `measure --json`, `status --json` and `metrics`,
// whose figures must match the runs' own reports exactly; the metrics text
// is checked line by line against the Prometheus exposition format.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "jobs/job_store.h"
#include "tests/jobs/replication_test_util.h"

namespace blkrep::jobs::test {
namespace {

// `blkrep journal write GUEST NAME=PATH --offset --length --pattern` (the
// tracking layer, journal first), as a test step.
bool JournalWrite(Rig& rig, const VolumeSpec& v, std::uint64_t offset, std::uint64_t length, int pattern) {
  RunResult r = rig.Blkrep({"journal", "write", kGuest, v.name + "=" + v.path, "--offset", std::to_string(offset),
                            "--length", std::to_string(length), "--pattern", std::to_string(pattern), "--block-size",
                            std::to_string(kBlockBytes)});
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  return r.exit_status == 0;
}

json JsonOf(const RunResult& r) {
  EXPECT_EQ(r.exit_status, 0) << Describe(r);
  return json::parse(r.out, nullptr, false);
}

// One sample of the exposition text.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Checks `text` against the Prometheus text exposition format (version
// 0.0.4) line by line; returns "" or the first problem. Samples go to
// *samples.
std::string ValidateExposition(const std::string& text, std::vector<Sample>* samples) {
  static const std::regex kHelp(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*))");
  static const std::regex kType(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex kSample(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([^ ]+)( -?[0-9]+)?)");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$))re");
  if (text.empty() || text.back() != '\n') return "the text does not end with a newline";
  std::set<std::string> helped, typed, families_done, series;
  std::string current;  // family whose samples come now
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    std::string where = "line " + std::to_string(n) + " '" + line + "': ";
    std::smatch m;
    if (line.empty()) return where + "empty line";
    if (line[0] == '#') {
      if (std::regex_match(line, m, kHelp)) {
        if (!helped.insert(m[1]).second) return where + "second HELP for the family";
        if (families_done.count(m[1])) return where + "family continues after others";
        // HELP text: only \\ and \n escapes.
        std::string help = m[2];
        for (std::size_t i = 0; i < help.size(); ++i) {
          if (help[i] == '\\' && (i + 1 >= help.size() || (help[i + 1] != '\\' && help[i + 1] != 'n'))) {
            return where + "bad escape in HELP";
          }
          if (help[i] == '\\') ++i;
        }
      } else if (std::regex_match(line, m, kType)) {
        if (!typed.insert(m[1]).second) return where + "second TYPE for the family";
        if (families_done.count(m[1])) return where + "TYPE after the family's samples";
      } else {
        return where + "a comment that is neither HELP nor TYPE";
      }
      if (current != m[1].str()) {
        if (!current.empty()) families_done.insert(current);
        current = m[1];
      }
      continue;
    }
    if (!std::regex_match(line, m, kSample)) return where + "not a sample";
    Sample s;
    s.name = m[1];
    if (s.name != current) return where + "sample outside its family's block (TYPE " + current + ")";
    if (!typed.count(s.name) || !helped.count(s.name)) return where + "sample before HELP and TYPE";
    std::string labels = m[3];
    std::size_t at = 0;
    while (at < labels.size()) {
      std::smatch lm;
      std::string rest = labels.substr(at);
      if (!std::regex_search(rest, lm, kLabel, std::regex_constants::match_continuous)) {
        return where + "bad label list at '" + rest + "'";
      }
      if (!s.labels.emplace(lm[1], lm[2]).second) return where + "label given twice";
      at += lm.length(0);
    }
    std::string value = m[4];
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0') {
      if (value != "NaN" && value != "+Inf" && value != "-Inf") return where + "bad value";
    }
    std::string key = s.name + "{" + labels + "}";
    if (!series.insert(key).second) return where + "series given twice";
    samples->push_back(std::move(s));
  }
  return "";
}

// The value of the sample of `name` with job="vm100-1" (and the state label
// if given); NaN if absent.
double SampleValue(const std::vector<Sample>& samples, const std::string& name, const std::string& state = "") {
  for (const auto& s : samples) {
    auto job = s.labels.find("job");
    if (s.name != name || job == s.labels.end() || job->second != "vm100-1") continue;
    if (!state.empty() && s.labels.at("state") != state) continue;
    return s.value;
  }
  return std::nan("");
}

TEST(MonitoringCliTest, MeasureMatchesTheRunsReportsAndPendingIsTheBlocksWrittenSinceTheLastCycle) {
  Rig rig;
  rig.AddVolume("disk0", 1 * kMiB);
  rig.AddVolume("disk1", 512 * 1024);
  const auto& v = rig.volumes();
  ASSERT_TRUE(JournalWrite(rig, v[0], 0, 64 * 1024, 17));
  ASSERT_TRUE(JournalWrite(rig, v[1], 8 * kBlockBytes, 4 * kBlockBytes, 18));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  // Before the first cycle everything is pending: it will be full.
  json before = JsonOf(rig.Blkrep({"measure", "vm100-1", "--json"}));
  EXPECT_EQ(before["pending_bytes"], 1 * kMiB + 512 * 1024) << before.dump();
  EXPECT_EQ(before["success_count"], 0);

  std::vector<json> runs;
  runs.push_back(rig.Run("vm100-1"));
  ASSERT_TRUE(JournalWrite(rig, v[0], 100 * kBlockBytes, 3 * kBlockBytes, 19));
  runs.push_back(rig.Run("vm100-1"));
  ASSERT_TRUE(JournalWrite(rig, v[1], 0, 2 * kBlockBytes + 1, 20));  // 3 blocks
  runs.push_back(rig.Run("vm100-1"));
  ASSERT_EQ(runs[0]["mode"], "full");
  ASSERT_EQ(runs[1]["mode"], "incremental");
  ASSERT_EQ(runs[2]["blocks_sent"], 3);
  // Written since the last cycle: 5 blocks of disk0, 2 of disk1 (one of
  // them twice).
  ASSERT_TRUE(JournalWrite(rig, v[0], 200 * kBlockBytes + 10, 4 * kBlockBytes, 21));
  ASSERT_TRUE(JournalWrite(rig, v[1], 40 * kBlockBytes, kBlockBytes + 1, 22));
  ASSERT_TRUE(JournalWrite(rig, v[1], 40 * kBlockBytes, 10, 23));

  std::uint64_t total = 0, maximum = 0;
  double latency_sum = 0, latency_max = 0;
  for (const auto& r : runs) {
    std::uint64_t bytes = r["bytes_sent"];
    total += bytes;
    maximum = std::max(maximum, bytes);
    latency_sum += r["duration"].get<double>();
    latency_max = std::max(latency_max, r["duration"].get<double>());
  }
  json m = JsonOf(rig.Blkrep({"measure", "vm100-1", "--json"}));
  ASSERT_TRUE(m.is_object()) << m.dump();
  EXPECT_EQ(m["id"], "vm100-1");
  EXPECT_EQ(m["state"], "ok");
  EXPECT_EQ(m["health"], "normal") << m.dump();
  EXPECT_EQ(m["health_reasons"], json::array());
  EXPECT_EQ(m["success_count"], 3);
  EXPECT_EQ(m["missed_count"], 0);
  EXPECT_EQ(m["error_count"], 0);
  EXPECT_EQ(m["total_bytes"].get<std::uint64_t>(), total);
  EXPECT_EQ(m["average_size_bytes"].get<std::uint64_t>(), total / 3);
  EXPECT_EQ(m["maximum_size_bytes"].get<std::uint64_t>(), maximum);
  EXPECT_DOUBLE_EQ(m["average_latency_seconds"].get<double>(), latency_sum / 3);
  EXPECT_DOUBLE_EQ(m["maximum_latency_seconds"].get<double>(), latency_max);
  EXPECT_EQ(m["pending_bytes"].get<std::uint64_t>(), 7 * kBlockBytes);
  json st = rig.Status("vm100-1");
  EXPECT_EQ(m["last_success"], st["last_sync"]);
  EXPECT_EQ(st["health"], "normal");
  EXPECT_EQ(st["health_reasons"], json::array());
  EXPECT_LE(m["window_start"].get<std::int64_t>(), m["window_end"].get<std::int64_t>());
  // Every job without JOBID: an array; the table for people names it.
  json all = JsonOf(rig.Blkrep({"measure", "--json"}));
  ASSERT_TRUE(all.is_array());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0], m);
  RunResult table = rig.Blkrep({"measure"});
  EXPECT_EQ(table.exit_status, 0) << Describe(table);
  EXPECT_NE(table.out.find("vm100-1"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("normal"), std::string::npos) << table.out;
  // A window in the future, an unknown job, a bad time: errors.
  EXPECT_EQ(rig.Blkrep({"measure", "--since", "2100-01-01"}).exit_status, 2);
  EXPECT_EQ(rig.Blkrep({"measure", "--since", "yesterday"}).exit_status, 2);
  RunResult unknown = rig.Blkrep({"measure", "vm100-9"});
  EXPECT_EQ(unknown.exit_status, 1) << Describe(unknown);
  EXPECT_EQ(unknown.err.rfind("blkrep: error: ", 0), 0u) << unknown.err;
  // The metrics: valid exposition text carrying the same figures.
  RunResult metrics = rig.Blkrep({"metrics"});
  ASSERT_EQ(metrics.exit_status, 0) << Describe(metrics);
  std::vector<Sample> samples;
  std::string problem = ValidateExposition(metrics.out, &samples);
  ASSERT_EQ(problem, "") << metrics.out;
  EXPECT_EQ(SampleValue(samples, "blkrep_job_pending_bytes"), 7.0 * kBlockBytes);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_cycles_succeeded"), 3);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_cycles_missed"), 0);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_cycle_maximum_bytes"), static_cast<double>(maximum));
  EXPECT_EQ(SampleValue(samples, "blkrep_job_last_sent_bytes"), runs[2]["bytes_sent"].get<double>());
  EXPECT_EQ(SampleValue(samples, "blkrep_job_last_sync_timestamp_seconds"), st["last_sync"].get<double>());
  EXPECT_EQ(SampleValue(samples, "blkrep_job_health"), 0);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_enabled"), 1);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_fail_count"), 0);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_state", "ok"), 1);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_state", "error"), 0);
  for (const auto& s : samples) {
    if (s.name == "blkrep_metrics_generated_timestamp_seconds") continue;
    EXPECT_EQ(s.labels.at("guest"), "vm100") << s.name;
    EXPECT_EQ(s.labels.at("target"), "local") << s.name;
  }
  double generated = std::nan("");
  for (const auto& s : samples) {
    if (s.name == "blkrep_metrics_generated_timestamp_seconds") generated = s.value;
  }
  EXPECT_NEAR(generated, static_cast<double>(std::time(nullptr)), 60);

  // --output: exactly that file, mode 0644, no temporary left; replaced on
  // the next run.
  std::string textfile_dir = rig.dir().File("textfile");
  ASSERT_EQ(::mkdir(textfile_dir.c_str(), 0755), 0);
  std::string prom = textfile_dir + "/blkrep.prom";
  const mode_t saved_umask = ::umask(077);  // the file is 0644 whatever the umask
  for (int i = 0; i < 2; ++i) {
    RunResult out = rig.Blkrep({"metrics", "--output", prom});
    ASSERT_EQ(out.exit_status, 0) << Describe(out);
    EXPECT_EQ(out.out, "");
  }
  ::umask(saved_umask);
  std::vector<std::string> names;
  if (DIR* d = ::opendir(textfile_dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") names.push_back(e->d_name);
    }
    ::closedir(d);
  }
  EXPECT_EQ(names, std::vector<std::string>{"blkrep.prom"});
  struct stat sb {};
  ASSERT_EQ(::stat(prom.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 07777, 0644u);
  std::vector<Sample> from_file;
  EXPECT_EQ(ValidateExposition(Slurp(prom), &from_file), "");
  EXPECT_EQ(from_file.size(), samples.size());
  // A directory that does not exist: a one-line error naming the file.
  RunResult bad = rig.Blkrep({"metrics", "--output", rig.dir().File("nowhere/blkrep.prom")});
  EXPECT_EQ(bad.exit_status, 1) << Describe(bad);
  EXPECT_NE(bad.err.find("nowhere/blkrep.prom.tmp"), std::string::npos) << bad.err;
}

TEST(MonitoringCliTest, AFailingTargetMakesTheHealthCritical) {
  Rig rig;
  rig.AddVolume("disk0", 256 * 1024);
  ASSERT_TRUE(JournalWrite(rig, rig.volumes()[0], 0, kBlockBytes, 5));
  ASSERT_TRUE(rig.AddTarget("broken", {"--exec", "echo receiver is down >&2; exit 3"}));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "broken"));
  RunResult r = rig.Blkrep({"run", "--id", "vm100-1"});
  ASSERT_EQ(r.exit_status, 1) << Describe(r);
  json m = JsonOf(rig.Blkrep({"measure", "vm100-1", "--json"}));
  EXPECT_EQ(m["state"], "error");
  EXPECT_EQ(m["health"], "critical") << m.dump();
  ASSERT_GE(m["health_reasons"].size(), 1u);
  EXPECT_NE(m["health_reasons"][0].get<std::string>().find("receiver is down"), std::string::npos) << m.dump();
  EXPECT_EQ(m["success_count"], 0);
  EXPECT_EQ(m["missed_count"], 1);
  EXPECT_EQ(m["error_count"], 1);
  // Nothing reached the target: every block is still pending.
  EXPECT_EQ(m["pending_bytes"], 256 * 1024);
  json st = rig.Status("vm100-1");
  EXPECT_EQ(st["health"], "critical");
  RunResult metrics = rig.Blkrep({"metrics"});
  std::vector<Sample> samples;
  ASSERT_EQ(ValidateExposition(metrics.out, &samples), "") << metrics.out;
  EXPECT_EQ(SampleValue(samples, "blkrep_job_health"), 2);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_state", "error"), 1);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_state", "ok"), 0);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_fail_count"), 1);
  EXPECT_EQ(SampleValue(samples, "blkrep_job_cycle_errors"), 1);
}

TEST(MonitoringCliTest, OneMissedCycleInFourIsAWarningInMeasureStatusAndMetrics) {
  Rig rig;
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  // A history of the last hour, written as runs write it.
  {
    auto store = JobStore::Open(rig.state_dir());
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    std::int64_t now = std::time(nullptr);
    auto add = [&](std::int64_t ago, const std::string& kind, const std::string& details) {
      Event e{0, now - ago, kind, "vm100-1", "vm100", kind, details};
      ASSERT_TRUE((*store)->AddEvent(e).ok());
    };
    const std::string done = "{\"mode\":\"incremental\",\"blocks_sent\":1,\"bytes_sent\":1000,\"duration\":0.5}";
    add(2400, "cycle-completed", done);
    add(1800, "cycle-failed", "{\"error\":\"receiver is down\",\"fail_count\":1}");
    add(1200, "cycle-completed", done);
    add(600, "cycle-completed", done);
  }
  json m = JsonOf(rig.Blkrep({"measure", "vm100-1", "--json"}));
  EXPECT_EQ(m["health"], "warning") << m.dump();
  EXPECT_EQ(m["health_reasons"], json::array({"1 of 4 cycles missed in the window (25%, warning at 20%)"}));
  EXPECT_EQ(m["success_count"], 3);
  EXPECT_EQ(m["missed_count"], 1);
  EXPECT_EQ(m["average_size_bytes"], 1000);
  // The guest has no journal: pending is unknown.
  EXPECT_TRUE(m["pending_bytes"].is_null()) << m.dump();
  EXPECT_EQ(rig.Status("vm100-1")["health"], "warning");
  RunResult metrics = rig.Blkrep({"metrics"});
  std::vector<Sample> samples;
  ASSERT_EQ(ValidateExposition(metrics.out, &samples), "") << metrics.out;
  EXPECT_EQ(SampleValue(samples, "blkrep_job_health"), 1);
  EXPECT_TRUE(std::isnan(SampleValue(samples, "blkrep_job_pending_bytes")));
  // A window that starts after the failure: normal.
  json later =
      JsonOf(rig.Blkrep({"measure", "vm100-1", "--json", "--since", std::to_string(std::time(nullptr) - 1500)}));
  EXPECT_EQ(later["health"], "normal") << later.dump();
  EXPECT_EQ(later["success_count"], 2);
  // Suspended: a warning saying so, in measure and status alike.
  ASSERT_EQ(rig.Blkrep({"suspend", "vm100-1"}).exit_status, 0);
  later = JsonOf(rig.Blkrep({"measure", "vm100-1", "--json", "--since", std::to_string(std::time(nullptr) - 1500)}));
  EXPECT_EQ(later["state"], "suspended");
  EXPECT_EQ(later["health"], "warning");
  EXPECT_EQ(later["health_reasons"], json::array({"replication is suspended (blkrep resume vm100-1)"}));
  EXPECT_EQ(rig.Status("vm100-1")["health_reasons"].size(), 2u);  // and the 1 in 4 of the default window
}

TEST(MonitoringCliTest, TheValidatorRejectsWhatTheFormatForbids) {
  std::vector<Sample> s;
  const std::string ok = "# HELP a_bytes x\n# TYPE a_bytes gauge\na_bytes{job=\"q\\\"\\\\\\n\"} 1\n";
  EXPECT_EQ(ValidateExposition(ok, &s), "");
  EXPECT_NE(ValidateExposition("# HELP a x\n# TYPE a gauge\na 1", &s), "");                  // no final newline
  EXPECT_NE(ValidateExposition("a 1\n", &s), "");                                            // no TYPE
  EXPECT_NE(ValidateExposition("# HELP a x\n# TYPE a gauge\na{job=\"x\"y\"} 1\n", &s), "");  // bad escape
  EXPECT_NE(ValidateExposition("# HELP a x\n# TYPE a gauge\na{1job=\"x\"} 1\n", &s), "");    // bad label name
  EXPECT_NE(ValidateExposition("# HELP a x\n# TYPE a gauge\na 1\na 2\n", &s), "");           // series twice
  EXPECT_NE(ValidateExposition("# HELP a x\n# TYPE a gauge\na one\n", &s), "");              // bad value
  EXPECT_NE(ValidateExposition("# HELP a x\n# TYPE a gauges\na 1\n", &s), "");               // bad type
}

// Debian's python3-prometheus-client parses the text the way Prometheus
// does; used when it is installed.
TEST(MonitoringCliTest, PrometheusClientParsesTheMetrics) {
  if (std::system("/usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3-prometheus-client is not installed (Debian: apt-get install python3-prometheus-client)";
  }
  Rig rig;
  rig.AddVolume("disk0", 256 * 1024);
  ASSERT_TRUE(JournalWrite(rig, rig.volumes()[0], 0, kBlockBytes, 5));
  ASSERT_TRUE(rig.AddLocalTarget("local"));
  ASSERT_TRUE(rig.CreateJob("vm100-1", "local"));
  ASSERT_FALSE(rig.Run("vm100-1").is_null());
  std::string prom = rig.dir().File("blkrep.prom");
  RunResult out = rig.Blkrep({"metrics", "--output", prom});
  ASSERT_EQ(out.exit_status, 0) << Describe(out);
  RunResult parsed =
      RunProgram(rig.dir(), {"/usr/bin/python3", "-c",
                             "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n"
                             "fs = list(p(open(sys.argv[1]).read()))\n"
                             "assert all(f.name.startswith('blkrep_') and f.type == 'gauge' for f in fs), fs\n"
                             "print(sum(len(f.samples) for f in fs))\n",
                             prom});
  ASSERT_EQ(parsed.exit_status, 0) << Describe(parsed);
  std::vector<Sample> samples;
  ASSERT_EQ(ValidateExposition(Slurp(prom), &samples), "");
  EXPECT_EQ(std::atoi(parsed.out.c_str()), static_cast<int>(samples.size())) << parsed.out;
  EXPECT_GT(samples.size(), 10u);
}

}  // namespace
}  // namespace blkrep::jobs::test
