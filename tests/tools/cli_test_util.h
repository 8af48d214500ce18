// What the command-line tests share: running the blkrep binary
// ($BLKREP_BIN, set by ctest) with its output captured in files of the
// test's temporary directory.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/core/temp_dir.h"

extern char** environ;

namespace blkrep::tools::cli_test {

using core::test_support::TempDir;

struct RunResult {
  int exit_status = -1;
  std::string out;
  std::string err;
};

inline std::string Binary() {
  const char* bin = std::getenv("BLKREP_BIN");
  EXPECT_NE(bin, nullptr) << "BLKREP_BIN must name the blkrep binary (ctest sets it)";
  return bin ? bin : "blkrep";
}

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline pid_t Spawn(const TempDir& dir, std::vector<std::string> args, const std::string& tag) {
  std::string out = dir.path() + "/" + tag + ".stdout", err = dir.path() + "/" + tag + ".stderr";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawnp(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

inline RunResult Wait(const TempDir& dir, pid_t pid, const std::string& tag) {
  RunResult run;
  if (pid < 0) return run;
  int status = 0;
  waitpid(pid, &status, 0);
  run.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  run.out = Slurp(dir.path() + "/" + tag + ".stdout");
  run.err = Slurp(dir.path() + "/" + tag + ".stderr");
  return run;
}

// Runs blkrep with `args` and waits for it; `tag` names the output files.
inline RunResult Blkrep(const TempDir& dir, std::vector<std::string> args, const std::string& tag = "run") {
  args.insert(args.begin(), Binary());
  return Wait(dir, Spawn(dir, args, tag), tag);
}

}  // namespace blkrep::tools::cli_test
