// The tracker's control socket (STATE/control/GUEST.sock): how other blkrep
// processes talk to a running tracker. Requests are one line; the reply is
// the whole stream until the server closes it.
//
//   inspect json | inspect text   what `journal inspect` prints
//
// Later: freeze/release for the shipper. Unknown requests get
// "error: unknown request" and the connection is closed.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "core/status.h"

namespace blkrep::tracker {

// STATE/control/GUEST.sock
inline std::string ControlSocketPath(const std::string& state_dir, const std::string& guest) {
  return state_dir + "/control/" + guest + ".sock";
}

class ControlServer {
 public:
  // `handler` maps a request line to the reply; it runs on the server's
  // thread, one request at a time.
  explicit ControlServer(std::function<std::string(const std::string&)> handler)
      : handler_(std::move(handler)) {}
  ~ControlServer() { Stop(); }
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Binds the socket (mode 0600; a stale socket of a dead process is
  // replaced) and starts serving.
  core::Status Start(const std::string& path);
  void Stop();

 private:
  void Serve();
  std::function<std::string(const std::string&)> handler_;
  std::string path_;
  int fd_ = -1;
  std::atomic<bool> stopping_ = false;
  std::thread thread_;
};

// Sends `request` to the control socket at `path` and returns the reply.
// kNotFound when nothing listens there (no tracker runs).
core::Result<std::string> AskControl(const std::string& path, const std::string& request);

}  // namespace blkrep::tracker
