// Authentication of TCP connections between shipper and receiver
// (docs/wire-protocol.md, "Authentication").
//
// Design note. A TCP peer is refused unless it proves itself before the
// first protocol frame, in one of two ways:
//   - a pre-shared key (PSK): a fixed-size mutual challenge-response, HMAC-
//     SHA256 over both sides' random 32-byte nonces and a role label, the
//     server proving itself first so a wrong-keyed or rogue server learns
//     nothing it could replay. After it the connection is plain TCP (no
//     confidentiality or integrity beyond the frames' checksums).
//   - TLS 1.3 with certificates (OpenSSL): the client verifies the server
//     against a CA file and the address it dialled; a server given a CA file
//     requires a client certificate from it (mutual TLS).
// Both end with an 8-byte result from the server, so a refused client learns
// it at connect time instead of at its first frame. The handshake runs over
// any Stream; time limits and cancellation belong to the stream
// (proto/transport.cc).
//
// Thread safety: PskKey and TlsContext are immutable after creation and may
// be shared between threads; a handshake uses its stream from one thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/frame.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX, kept out of this header.

namespace blkrep::proto {

inline constexpr int kDefaultHandshakeTimeoutMs = 10000;

// How a TCP connection is authenticated. Exactly one of `psk_file` and the
// TLS files is used:
//   client: psk_file, or tls_ca (+ optional tls_cert/tls_key for mutual TLS);
//   server: psk_file, or tls_cert + tls_key (+ optional tls_ca: then a client
//           certificate signed by it is required).
struct AuthOptions {
  std::string psk_file;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
  // Time allowed for the authentication handshake with one peer (and, on
  // the client, separately for the TCP connect). Tests shorten it.
  int handshake_timeout_ms = kDefaultHandshakeTimeoutMs;

  bool uses_psk() const { return !psk_file.empty(); }
  bool uses_tls() const { return !tls_cert.empty() || !tls_key.empty() || !tls_ca.empty(); }
};

// ---- pre-shared key ----

inline constexpr std::size_t kMinPskBytes = 32;
inline constexpr std::size_t kMaxPskBytes = 1024;

// The key: the PSK file's bytes exactly as stored (a trailing newline is
// part of the key). Wiped from memory on destruction.
class PskKey {
 public:
  // Reads `path`. kInvalidArgument (naming the file) when it is not a
  // regular file, is readable or writable by "other" users, or holds fewer
  // than kMinPskBytes or more than kMaxPskBytes bytes; an errno status when
  // it cannot be opened or read.
  static core::Result<PskKey> Load(const std::string& path);
  // For tests. REQUIRES: kMinPskBytes <= bytes.size() <= kMaxPskBytes.
  static PskKey FromBytes(std::span<const std::byte> bytes);

  PskKey(PskKey&& other) noexcept;
  PskKey& operator=(PskKey&& other) noexcept;
  PskKey(const PskKey&) = delete;
  PskKey& operator=(const PskKey&) = delete;
  ~PskKey();

  std::span<const std::byte> bytes() const { return bytes_; }

 private:
  PskKey() = default;
  std::vector<std::byte> bytes_;
};

// Handshake constants (docs/wire-protocol.md, "Authentication").
inline constexpr std::uint32_t kAuthMagic = 0x41524B42;  // "BKRA" little-endian
inline constexpr std::uint8_t kAuthVersion = 1;
inline constexpr std::size_t kAuthHeaderBytes = 8;
inline constexpr std::size_t kAuthNonceBytes = 32;
inline constexpr std::size_t kAuthProofBytes = 32;
inline constexpr std::size_t kAuthClientHelloBytes = kAuthHeaderBytes + kAuthNonceBytes;  // 40
inline constexpr std::size_t kAuthServerProofBytes =
    kAuthHeaderBytes + kAuthNonceBytes + kAuthProofBytes;                                // 72
inline constexpr std::size_t kAuthClientProofBytes = kAuthHeaderBytes + kAuthProofBytes;  // 40
inline constexpr std::size_t kAuthResultBytes = kAuthHeaderBytes;                         // 8

enum class AuthMethod : std::uint8_t { kPsk = 1, kTls = 2 };
enum class AuthCode : std::uint8_t {
  kOk = 0,           // continue / accepted
  kRefused = 1,      // the peer's proof is wrong
  kUnsupported = 2,  // unknown version or method
};

// The two proofs of a PSK handshake: HMAC-SHA256(key, label || client_hello
// || server_proof[0..40)), label "blkrep-auth-v1 server proof" or
// "blkrep-auth-v1 client proof". Exposed for tests.
std::array<std::byte, kAuthProofBytes> PskProof(const PskKey& key, bool server_role,
                                                std::span<const std::byte, kAuthClientHelloBytes> client_hello,
                                                std::span<const std::byte, kAuthClientHelloBytes> server_head);

// Runs one side of the PSK handshake over `stream`. On success the stream is
// positioned at the first protocol frame. Errors (their messages do not name
// the peer; the caller adds it):
//   kCorruption  the peer's bytes are not this handshake, or its proof is
//                wrong (different key);
//   kAborted     the peer refused us or closed the connection mid-way;
//   kUnsupported the peer speaks another handshake version;
//   whatever the stream returns (e.g. a time-out).
// The server side answers a wrong proof with a refusal before failing.
core::Status PskHandshakeClient(Stream& stream, const PskKey& key);
core::Status PskHandshakeServer(Stream& stream, const PskKey& key);

// The 8-byte result the server sends after a TLS handshake, inside TLS.
core::Status SendTlsAccepted(Stream& stream);
core::Status ReadTlsAccepted(Stream& stream);

// ---- TLS ----

// An OpenSSL SSL_CTX configured for TLS 1.3 only, from AuthOptions.
class TlsContext {
 public:
  enum class Role { kClient, kServer };
  // Loads the certificate, key and CA files now, so that a bad file is
  // reported at start-up. kInvalidArgument names the option and file.
  static core::Result<std::shared_ptr<TlsContext>> Create(Role role, const AuthOptions& options);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  ssl_ctx_st* native() const { return ctx_; }
  Role role() const { return role_; }

 private:
  TlsContext(ssl_ctx_st* ctx, Role role) : ctx_(ctx), role_(role) {}
  ssl_ctx_st* ctx_;
  Role role_;
};

// The pending OpenSSL errors of this thread as "reason; reason", emptying
// the queue ("" when none).
std::string TakeOpenSslErrors();

}  // namespace blkrep::proto
