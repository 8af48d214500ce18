// `blkrep receive`: the receiver of one replication session (CONTRACT.md).
//
// --stdio serves one session on stdin/stdout (what `target add --exec/--ssh`
// runs): stdout carries protocol frames and nothing else; errors go to
// stderr as one line. --listen HOST:PORT accepts authenticated TCP peers
// (a pre-shared key or TLS certificates, proto/auth.h) and serves each
// session on its own thread until SIGTERM or SIGINT.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <thread>

#include <optional>
#include <string>
#include <vector>

#include "core/units.h"
#include "proto/frame.h"
#include "proto/transport.h"
#include "receiver/receiver.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace blkrep::tools {
namespace {

using core::Status;

constexpr const char* kUsage =
    "usage: blkrep receive --stdio --replica-dir DIR [--sync-interval SIZE] [--compat-features BITS] | blkrep receive --listen HOST:PORT --replica-dir DIR (--psk-file FILE | --tls-cert FILE --tls-key FILE "
    "[--tls-ca FILE])";

// Serves sessions from `listener` until SIGTERM/SIGINT. Each session runs on
// its own thread; the receiver's guest lock keeps two sessions of one guest
// apart.
int ServeListener(proto::Listener& listener, const receiver::ReceiverOptions& options) {
  sigset_t signals = BlockStopSignals();
  std::thread waiter([&] {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    listener.Stop();
  });
  std::fprintf(stderr, "blkrep: receiving on %s into %s\n", listener.address().c_str(), options.replica_dir.c_str());
  std::mutex mu;
  std::vector<std::thread> sessions;
  for (;;) {
    std::string peer;
    auto stream = listener.Accept(&peer);
    if (!stream.ok()) {
      if (listener.stopped()) break;
      std::fprintf(stderr, "blkrep: warning: %s\n", stream.status().ToString().c_str());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // no spinning on a lasting accept failure
      continue;
    }
    std::lock_guard lock(mu);
    sessions.emplace_back([s = std::move(stream).value(), peer, &options]() mutable {
      receiver::SessionReport report;
      Status status = receiver::ServeSession(*s, options, &report);
      if (!status.ok()) {
        std::fprintf(stderr, "blkrep: error: session from %s: %s\n", peer.c_str(), status.ToString().c_str());
      } else if (report.committed) {
        std::fprintf(stderr, "blkrep: %s: committed %s cycle of %s from %s\n", report.job.c_str(),
                     report.mode.c_str(), report.guest.c_str(), peer.c_str());
      }
    });
  }
  // Only a signal stops the listener: the waiter has finished.
  waiter.join();
  for (auto& t : sessions) t.join();
  return kExitOk;
}

}  // namespace

int ReceiveCommand(const std::vector<std::string>& argv) {
  auto args = ParseArgs(argv, {"replica-dir", "listen", "psk-file", "tls-cert", "tls-key", "tls-ca", "sync-interval", "state-dir",
                                "compat-features"},
                        {"stdio"});
  if (!args.ok()) return ReportError(args.status().WithContext(kUsage));
  if (!args->positional.empty()) return ReportError(Status::InvalidArgument(kUsage));
  std::optional<std::string> replica_dir = args->Value("replica-dir");
  if (!replica_dir || replica_dir->empty()) {
    return ReportError(Status::InvalidArgument("--replica-dir is required; " + std::string(kUsage)));
  }
  bool stdio = args->Flag("stdio");
  std::optional<std::string> listen = args->Value("listen");
  if (stdio == listen.has_value()) {
    return ReportError(Status::InvalidArgument("give exactly one of --stdio and --listen; " + std::string(kUsage)));
  }
  receiver::ReceiverOptions options;
  options.replica_dir = *replica_dir;
  if (auto interval = args->Value("sync-interval")) {
    // How much staged data may be lost to a cut (and sent again): the
    // receiver makes staging durable at least this often.
    auto n = core::ParseSize(*interval);
    if (!n.ok() || *n < 4096) return ReportError(Status::InvalidArgument("--sync-interval: at least 4K"));
    options.durability_batch_bytes = *n;
  }
  if (auto mask = args->Value("compat-features")) {
    // Grant at most these feature bits (a number): behave like an older
    // receiver, to test a newer shipper against it.
    char* end = nullptr;
    unsigned long long v = std::strtoull(mask->c_str(), &end, 0);
    if (mask->empty() || *end != '\0') {
      return ReportError(Status::InvalidArgument("--compat-features: a number (feature bits), got '" + *mask + "'"));
    }
    options.feature_mask = v;
  }
  // A peer that goes away must turn into an error status, not a SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  KeepLargeBuffersOnTheHeap();  // frames of megabytes
  if (listen) {
    proto::AuthOptions auth;
    auth.psk_file = args->Value("psk-file").value_or("");
    auth.tls_cert = args->Value("tls-cert").value_or("");
    auth.tls_key = args->Value("tls-key").value_or("");
    auth.tls_ca = args->Value("tls-ca").value_or("");
    auto listener = proto::Listener::Listen(*listen, auth);
    if (!listener.ok()) return ReportError(listener.status());
    return ServeListener(**listener, options);
  }

  proto::FdStream stream(0, 1, /*owned=*/false);
  Status status = receiver::ServeSession(stream, options, nullptr);
  if (!status.ok()) {
    // A failed session is a failed operation (1), whatever its code.
    (void)ReportError(status);
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace blkrep::tools
