#include "proto/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace blkrep::proto {
namespace {

using core::Result;
using core::Status;

constexpr char kServerLabel[] = "blkrep-auth-v1 server proof";
constexpr char kClientLabel[] = "blkrep-auth-v1 client proof";
static_assert(sizeof(kServerLabel) == sizeof(kClientLabel));

void PutHeader(std::byte* out, AuthMethod method, AuthCode code) {
  out[0] = std::byte{0x42};  // 'B'
  out[1] = std::byte{0x4B};  // 'K'
  out[2] = std::byte{0x52};  // 'R'
  out[3] = std::byte{0x41};  // 'A'
  out[4] = std::byte{kAuthVersion};
  out[5] = static_cast<std::byte>(method);
  out[6] = static_cast<std::byte>(code);
  out[7] = std::byte{0};
}

std::string HexPrefix(std::span<const std::byte> bytes, std::size_t count) {
  std::string text;
  for (std::size_t i = 0; i < bytes.size() && i < count; ++i) {
    char buffer[4];
    std::snprintf(buffer, sizeof(buffer), "%s%02x", i == 0 ? "" : " ",
                  static_cast<unsigned>(bytes[i]));
    text += buffer;
  }
  return text;
}

bool LooksLikeTls(std::span<const std::byte> bytes) {
  // A TLS record: content type 20..23 (handshake 22, alert 21), version 3.x.
  return bytes.size() >= 2 && static_cast<unsigned>(bytes[0]) >= 20 &&
         static_cast<unsigned>(bytes[0]) <= 23 && bytes[1] == std::byte{3};
}

// Checks an 8-byte header. `what` names the message for errors.
Status CheckHeader(std::span<const std::byte> header, AuthMethod method, const char* what) {
  std::uint32_t magic = static_cast<std::uint32_t>(header[0]) |
                        static_cast<std::uint32_t>(header[1]) << 8 |
                        static_cast<std::uint32_t>(header[2]) << 16 |
                        static_cast<std::uint32_t>(header[3]) << 24;
  if (magic != kAuthMagic) {
    std::string text = std::string("not a blkrep authentication handshake: ") + what +
                       " starts with " + HexPrefix(header, 8);
    if (LooksLikeTls(header)) text += " (a TLS record: the peer uses TLS, not a pre-shared key)";
    return Status::Corruption(std::move(text));
  }
  if (header[4] != std::byte{kAuthVersion}) {
    return Status::Unsupported(std::string(what) + " has handshake version " +
                               std::to_string(static_cast<unsigned>(header[4])) + ", we speak " +
                               std::to_string(kAuthVersion));
  }
  if (header[5] != static_cast<std::byte>(method)) {
    return Status::Unsupported(std::string(what) + " asks for authentication method " +
                               std::to_string(static_cast<unsigned>(header[5])) + ", expected " +
                               std::to_string(static_cast<unsigned>(method)) +
                               (method == AuthMethod::kPsk ? " (pre-shared key)" : " (TLS)"));
  }
  if (header[7] != std::byte{0}) {
    return Status::Corruption(std::string(what) + " has a non-zero reserved byte");
  }
  return Status::Ok();
}

AuthCode CodeOf(std::span<const std::byte> header) { return static_cast<AuthCode>(header[6]); }

// ReadFull with the end of stream turned into a handshake error.
Status ReadMessage(Stream& stream, std::span<std::byte> out, const char* what) {
  Status s = stream.ReadFull(out);
  if (s.code() == core::Code::kEndOfData) {
    return Status::Aborted(std::string("closed the connection during authentication, before sending ") +
                           what + " (does it use the same authentication method?)");
  }
  if (s.code() == core::Code::kAborted) {
    return Status::Aborted(std::string("the connection broke while reading ") + what + " (" + s.message() +
                           "; does it use the same authentication method?)");
  }
  return s;
}

}  // namespace

// ---- PskKey ----

Result<PskKey> PskKey::Load(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return core::ErrnoStatus(errno, "cannot open PSK file " + path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int error = errno;
    ::close(fd);
    return core::ErrnoStatus(error, "cannot stat PSK file " + path);
  }
  auto refuse = [&](std::string message) {
    ::close(fd);
    return Status::InvalidArgument(std::move(message));
  };
  if (!S_ISREG(st.st_mode)) return refuse("PSK file " + path + " is not a regular file");
  if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return refuse("PSK file " + path + " is accessible by other users (mode " + mode +
                  "); run chmod 600 " + path);
  }
  if (st.st_size < static_cast<off_t>(kMinPskBytes) || st.st_size > static_cast<off_t>(kMaxPskBytes)) {
    return refuse("PSK file " + path + " holds " + std::to_string(st.st_size) + " bytes; a key is " +
                  std::to_string(kMinPskBytes) + ".." + std::to_string(kMaxPskBytes) +
                  " bytes (e.g. head -c 32 /dev/urandom > " + path + ")");
  }
  PskKey key;
  key.bytes_.resize(static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (done < key.bytes_.size()) {
    ssize_t n = ::read(fd, key.bytes_.data() + done, key.bytes_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      ::close(fd);
      return core::ErrnoStatus(error, "cannot read PSK file " + path);
    }
    if (n == 0) return refuse("PSK file " + path + " shrank while it was read");
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return key;
}

PskKey PskKey::FromBytes(std::span<const std::byte> bytes) {
  PskKey key;
  key.bytes_.assign(bytes.begin(), bytes.end());
  return key;
}

PskKey::PskKey(PskKey&& other) noexcept : bytes_(std::move(other.bytes_)) { other.bytes_.clear(); }

PskKey& PskKey::operator=(PskKey&& other) noexcept {
  if (this != &other) {
    if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

PskKey::~PskKey() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
}

// ---- PSK handshake ----

std::array<std::byte, kAuthProofBytes> PskProof(
    const PskKey& key, bool server_role, std::span<const std::byte, kAuthClientHelloBytes> client_hello,
    std::span<const std::byte, kAuthClientHelloBytes> server_head) {
  constexpr std::size_t kLabelBytes = sizeof(kServerLabel) - 1;  // no terminator
  std::array<std::byte, kLabelBytes + 2 * kAuthClientHelloBytes> input;
  std::memcpy(input.data(), server_role ? kServerLabel : kClientLabel, kLabelBytes);
  std::memcpy(input.data() + kLabelBytes, client_hello.data(), kAuthClientHelloBytes);
  std::memcpy(input.data() + kLabelBytes + kAuthClientHelloBytes, server_head.data(),
              kAuthClientHelloBytes);
  std::array<std::byte, kAuthProofBytes> proof{};
  unsigned int proof_bytes = 0;
  unsigned char* done =
      HMAC(EVP_sha256(), key.bytes().data(), static_cast<int>(key.bytes().size()),
           reinterpret_cast<const unsigned char*>(input.data()), input.size(),
           reinterpret_cast<unsigned char*>(proof.data()), &proof_bytes);
  // HMAC-SHA256 with a valid key does not fail; an all-zero proof would only
  // make the handshake fail, never succeed.
  if (done == nullptr || proof_bytes != kAuthProofBytes) proof.fill(std::byte{0});
  return proof;
}

namespace {

Status RandomNonce(std::byte* out) {
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out), static_cast<int>(kAuthNonceBytes)) != 1) {
    return Status::Internal("cannot draw a random nonce: " + TakeOpenSslErrors());
  }
  return Status::Ok();
}

bool ProofMatches(std::span<const std::byte> got, const std::array<std::byte, kAuthProofBytes>& want) {
  return CRYPTO_memcmp(got.data(), want.data(), kAuthProofBytes) == 0;
}

}  // namespace

Status PskHandshakeClient(Stream& stream, const PskKey& key) {
  std::array<std::byte, kAuthClientHelloBytes> hello;
  PutHeader(hello.data(), AuthMethod::kPsk, AuthCode::kOk);
  BLKREP_RETURN_IF_ERROR(RandomNonce(hello.data() + kAuthHeaderBytes));
  BLKREP_RETURN_IF_ERROR(stream.WriteAll(hello));

  std::array<std::byte, kAuthServerProofBytes> server;
  BLKREP_RETURN_IF_ERROR(ReadMessage(stream, server, "its proof"));
  BLKREP_RETURN_IF_ERROR(CheckHeader(std::span(server).first(kAuthHeaderBytes), AuthMethod::kPsk,
                                     "the server's proof"));
  if (CodeOf(server) == AuthCode::kUnsupported) {
    return Status::Unsupported("the server does not support our handshake version " +
                               std::to_string(kAuthVersion) + " or the pre-shared key method");
  }
  if (CodeOf(server) != AuthCode::kOk) {
    return Status::Aborted("the server refused the handshake (code " +
                           std::to_string(static_cast<unsigned>(CodeOf(server))) + ")");
  }
  auto server_head = std::span(server).first<kAuthClientHelloBytes>();
  auto expected = PskProof(key, /*server_role=*/true, hello, server_head);
  std::array<std::byte, kAuthClientProofBytes> answer{};
  if (!ProofMatches(std::span(server).subspan(kAuthClientHelloBytes), expected)) {
    // Tell the server why we hang up, then fail.
    PutHeader(answer.data(), AuthMethod::kPsk, AuthCode::kRefused);
    (void)stream.WriteAll(answer);
    return Status::Corruption(
        "the server's proof does not match our pre-shared key (the two sides have different keys)");
  }
  PutHeader(answer.data(), AuthMethod::kPsk, AuthCode::kOk);
  auto proof = PskProof(key, /*server_role=*/false, hello, server_head);
  std::memcpy(answer.data() + kAuthHeaderBytes, proof.data(), kAuthProofBytes);
  BLKREP_RETURN_IF_ERROR(stream.WriteAll(answer));

  std::array<std::byte, kAuthResultBytes> result;
  BLKREP_RETURN_IF_ERROR(ReadMessage(stream, result, "its verdict"));
  BLKREP_RETURN_IF_ERROR(CheckHeader(result, AuthMethod::kPsk, "the server's verdict"));
  if (CodeOf(result) != AuthCode::kOk) {
    return Status::Aborted("the server refused our proof of the pre-shared key");
  }
  return Status::Ok();
}

Status PskHandshakeServer(Stream& stream, const PskKey& key) {
  std::array<std::byte, kAuthClientHelloBytes> hello;
  BLKREP_RETURN_IF_ERROR(ReadMessage(stream, hello, "a handshake"));
  std::array<std::byte, kAuthServerProofBytes> server{};
  Status header = CheckHeader(std::span(hello).first(kAuthHeaderBytes), AuthMethod::kPsk,
                              "the client's hello");
  if (header.code() == core::Code::kUnsupported) {
    PutHeader(server.data(), AuthMethod::kPsk, AuthCode::kUnsupported);
    (void)stream.WriteAll(server);
    return header;
  }
  BLKREP_RETURN_IF_ERROR(header);  // not a blkrep client: no answer
  if (CodeOf(hello) != AuthCode::kOk) {
    return Status::Corruption("the client's hello carries code " +
                              std::to_string(static_cast<unsigned>(CodeOf(hello))));
  }
  PutHeader(server.data(), AuthMethod::kPsk, AuthCode::kOk);
  BLKREP_RETURN_IF_ERROR(RandomNonce(server.data() + kAuthHeaderBytes));
  auto server_head = std::span(server).first<kAuthClientHelloBytes>();
  auto proof = PskProof(key, /*server_role=*/true, hello, server_head);
  std::memcpy(server.data() + kAuthClientHelloBytes, proof.data(), kAuthProofBytes);
  BLKREP_RETURN_IF_ERROR(stream.WriteAll(server));

  std::array<std::byte, kAuthClientProofBytes> answer;
  BLKREP_RETURN_IF_ERROR(ReadMessage(stream, answer, "its proof"));
  BLKREP_RETURN_IF_ERROR(CheckHeader(std::span(answer).first(kAuthHeaderBytes), AuthMethod::kPsk,
                                     "the client's proof"));
  if (CodeOf(answer) == AuthCode::kRefused) {
    return Status::Aborted(
        "the client rejected our proof of the pre-shared key (the two sides have different keys)");
  }
  std::array<std::byte, kAuthResultBytes> result;
  auto expected = PskProof(key, /*server_role=*/false, hello, server_head);
  if (CodeOf(answer) != AuthCode::kOk ||
      !ProofMatches(std::span(answer).subspan(kAuthHeaderBytes), expected)) {
    PutHeader(result.data(), AuthMethod::kPsk, AuthCode::kRefused);
    (void)stream.WriteAll(result);
    return Status::Corruption("the client's proof does not match our pre-shared key");
  }
  PutHeader(result.data(), AuthMethod::kPsk, AuthCode::kOk);
  return stream.WriteAll(result);
}

Status SendTlsAccepted(Stream& stream) {
  std::array<std::byte, kAuthResultBytes> result;
  PutHeader(result.data(), AuthMethod::kTls, AuthCode::kOk);
  return stream.WriteAll(result);
}

Status ReadTlsAccepted(Stream& stream) {
  std::array<std::byte, kAuthResultBytes> result;
  BLKREP_RETURN_IF_ERROR(ReadMessage(stream, result, "its verdict"));
  BLKREP_RETURN_IF_ERROR(CheckHeader(result, AuthMethod::kTls, "the server's verdict"));
  if (CodeOf(result) != AuthCode::kOk) return Status::Aborted("the server refused us");
  return Status::Ok();
}

// ---- TLS ----

std::string TakeOpenSslErrors() {
  std::string text;
  unsigned long error;
  while ((error = ERR_get_error()) != 0) {
    const char* reason = ERR_reason_error_string(error);
    std::string item;
    if (reason != nullptr) {
      item = reason;
    } else {
      char buffer[256];
      ERR_error_string_n(error, buffer, sizeof(buffer));
      item = buffer;
    }
    if (text.find(item) != std::string::npos) continue;
    if (!text.empty()) text += "; ";
    text += item;
  }
  return text;
}

Result<std::shared_ptr<TlsContext>> TlsContext::Create(Role role, const AuthOptions& options) {
  const bool server = role == Role::kServer;
  if (server && (options.tls_cert.empty() || options.tls_key.empty())) {
    return Status::InvalidArgument("TLS on the server needs both --tls-cert and --tls-key");
  }
  if (!server && options.tls_ca.empty()) {
    return Status::InvalidArgument("TLS on the client needs --tls-ca to verify the server");
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return Status::InvalidArgument("--tls-cert and --tls-key go together");
  }
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) return Status::Internal("cannot create a TLS context: " + TakeOpenSslErrors());
  std::shared_ptr<TlsContext> context(new TlsContext(ctx, role));
  auto fail = [](const std::string& what) {
    return Status::InvalidArgument(what + ": " + TakeOpenSslErrors());
  };
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1) return fail("cannot require TLS 1.3");
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (server) SSL_CTX_set_num_tickets(ctx, 0);  // no session resumption
  if (!options.tls_cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, options.tls_cert.c_str()) != 1) {
      return fail("cannot load --tls-cert " + options.tls_cert);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, options.tls_key.c_str(), SSL_FILETYPE_PEM) != 1) {
      return fail("cannot load --tls-key " + options.tls_key);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return fail("--tls-key " + options.tls_key + " does not belong to --tls-cert " + options.tls_cert);
    }
  }
  if (!options.tls_ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, options.tls_ca.c_str(), nullptr) != 1) {
      return fail("cannot load --tls-ca " + options.tls_ca);
    }
    if (server) {
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.tls_ca.c_str());
      if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);
      ERR_clear_error();
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    }
  }
  return context;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

}  // namespace blkrep::proto
