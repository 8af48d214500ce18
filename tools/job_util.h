// What the job commands share (tools/job_commands.cc and its siblings):
// the job store, times, the run lock, cancellation, events, shipper and
// resync options, progress on a terminal.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "core/file_system.h"
#include "core/json.h"
#include "core/status.h"
#include "core/units.h"
#include "jobs/job_store.h"
#include "shipper/shipper.h"
#include "tools/cli.h"

namespace blkrep::tools {

// Epoch seconds now.
std::int64_t Now();
// --rate MBPS (10^6 bytes per second; 0: no limit).
core::Status ParseRate(const std::string& text, double* rate);
// When the job runs next: a retry with back-off after failures (pvesr: last
// try + 5 minutes x fail count while it is at most 3, then every 30
// minutes), else the schedule. None for a disabled or suspended job; now
// for one given `schedule-now` (until a run clears it).
std::optional<std::int64_t> NextSync(const jobs::Job& j);
// Local time as "YYYY-MM-DD_HH:MM:SS"; "-" for none.
std::string FormatTime(std::optional<std::int64_t> t);
void JsonOptInt(core::JsonWriter& w, std::optional<std::int64_t> v);
core::Result<std::unique_ptr<jobs::JobStore>> OpenStore(const Args& args);
// The lock that keeps a job's runs (and a verify) from overlapping, held
// until the result is destroyed; kAborted "job ID is already running".
core::Result<std::unique_ptr<core::FileLock>> LockJobRun(const std::string& state_dir, const std::string& id);
// SIGINT and SIGTERM set g_cancel (a second signal kills as usual).
extern std::atomic<bool> g_cancel;
void InstallCancelHandlers();
// "HH:MM-HH:MM" (may wrap midnight); "" means at any time.
core::Status ValidateResyncWindow(const std::string& window);
bool InResyncWindow(const std::string& window, std::int64_t now);
// Whether a run may resynchronize the job now.
bool ResyncAllowed(const jobs::Job& j, std::int64_t now);
// Records an event; a failure is a warning on stderr, never an error.
void AddEventOrWarn(jobs::JobStore& store, const jobs::Event& e);
// --zstd-level, --batch-size, --read-ahead into `ship`.
core::Status ParseShipOptions(const Args& args, shipper::ShipOptions& ship);
// The definition options of create-local-job and update into `job`:
// --schedule (a calendar event, validated: kInvalidArgument naming what is
// wrong, or that it never runs again), --rate, --comment, --recovery-points (0 to 24), --auto-resync,
// --resync-window.
core::Status ParseDefinitionOptions(const Args& args, jobs::Job& job);
// --auto-resync on|off and --resync-window HH:MM-HH:MM|any into `job`.
core::Status ParseResyncOptions(const Args& args, jobs::Job& job);
jobs::Event MakeEvent(const jobs::Job& job, std::string kind, std::string message, std::string details);
// TIME: epoch seconds, or local "YYYY-MM-DD", "YYYY-MM-DD HH:MM[:SS]" or
// "YYYY-MM-DDTHH:MM[:SS]".
core::Result<std::int64_t> ParseTime(const std::string& text);

// Progress on a terminal: one line rewritten in place.
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), tty_(::isatty(2) != 0) {}
  void Update(std::uint64_t done, std::uint64_t total) {
    if (!tty_) return;
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
    std::fprintf(stderr, "\r%s: %s of %s (%.0f%%)   ", label_.c_str(), core::FormatSize(done).c_str(),
                 core::FormatSize(total).c_str(), pct);
    shown_ = true;
  }
  ~Progress() {
    if (shown_) std::fputs("\n", stderr);
  }

 private:
  std::string label_;
  bool tty_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace blkrep::tools
