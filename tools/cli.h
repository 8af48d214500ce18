// Command-line plumbing shared by blkrep's subcommands: argument parsing,
// the state directory, error reporting with CONTRACT.md's exit statuses.
#pragma once

#include <signal.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/status.h"

namespace blkrep::tools {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;

// Parsed arguments of one subcommand: positionals in order, options by name
// (without the leading "--"). Options take a value ("--x V" or "--x=V")
// when listed in `valued`, are flags when listed in `flags`; anything else
// starting with "--" is an error.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;
  std::set<std::string> flags;

  bool Flag(const std::string& name) const { return flags.count(name) > 0; }
  std::optional<std::string> Value(const std::string& name) const;
};

core::Result<Args> ParseArgs(const std::vector<std::string>& argv,
                             const std::set<std::string>& valued,
                             const std::set<std::string>& flags);

// --state-dir, else $BLKREP_STATE_DIR, else /var/lib/blkrep.
std::string StateDir(const Args& args);

// Prints "blkrep: error: <status>" and returns the exit status for it:
// 2 for invalid arguments, 1 for everything else.
int ReportError(const core::Status& status);

// For commands that move data: buffers of megabytes (requests, frames,
// batches) come and go at I/O rate; keep them on the heap for reuse instead
// of mapping fresh, zeroed pages for each one (page faults dominated the
// profiles of both the tracker and a full cycle).
void KeepLargeBuffersOnTheHeap();

// For commands that wait for SIGTERM/SIGINT with sigwait: blocks both in
// the calling thread (every thread it starts inherits the mask) and returns
// the set to wait on.
sigset_t BlockStopSignals();

// Splits "NAME=VOLUME", VOLUME made absolute; kInvalidArgument when malformed.
core::Result<std::pair<std::string, std::string>> ParseNameEqualsVolume(const std::string& text);

}  // namespace blkrep::tools
