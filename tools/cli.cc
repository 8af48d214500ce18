#include "tools/cli.h"

#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace blkrep::tools {

using core::Result;
using core::Status;

std::optional<std::string> Args::Value(const std::string& name) const {
  auto it = values.find(name);
  if (it == values.end()) return std::nullopt;
  return it->second;
}

Result<Args> ParseArgs(const std::vector<std::string>& argv, const std::set<std::string>& valued,
                       const std::set<std::string>& flags) {
  Args args;
  bool options_done = false;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& token = argv[i];
    if (options_done || token.size() < 3 || token.compare(0, 2, "--") != 0) {
      if (token == "--") {
        options_done = true;
        continue;
      }
      args.positional.push_back(token);
      continue;
    }
    std::string name = token.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (valued.count(name)) {
      if (inline_value) {
        args.values[name] = *inline_value;
      } else if (i + 1 < argv.size()) {
        args.values[name] = argv[++i];
      } else {
        return Status::InvalidArgument("option --" + name + " needs a value");
      }
    } else if (flags.count(name)) {
      if (inline_value) return Status::InvalidArgument("option --" + name + " takes no value");
      args.flags.insert(name);
    } else {
      return Status::InvalidArgument("unknown option --" + name);
    }
  }
  return args;
}

std::string StateDir(const Args& args) {
  if (auto dir = args.Value("state-dir")) return *dir;
  if (const char* env = std::getenv("BLKREP_STATE_DIR"); env != nullptr && *env != '\0') return env;
  return "/var/lib/blkrep";
}

int ReportError(const Status& status) {
  std::fprintf(stderr, "blkrep: error: %s\n", status.ToString().c_str());
  return status.code() == core::Code::kInvalidArgument ? kExitUsage : kExitFailed;
}

Result<std::pair<std::string, std::string>> ParseNameEqualsVolume(const std::string& text) {
  auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
    return Status::InvalidArgument("expected NAME=VOLUME, got '" + text + "'");
  }
  // Absolute: the journal records the path, and whoever opens the volume
  // later (a run without the tracker, demote) may have another directory.
  std::error_code ec;
  std::string path = std::filesystem::absolute(text.substr(eq + 1), ec).lexically_normal().string();
  if (ec) return Status::InvalidArgument("volume path '" + text.substr(eq + 1) + "': " + ec.message());
  return std::make_pair(text.substr(0, eq), path);
}

sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

void KeepLargeBuffersOnTheHeap() {
  ::mallopt(M_MMAP_THRESHOLD, 64 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

}  // namespace blkrep::tools
