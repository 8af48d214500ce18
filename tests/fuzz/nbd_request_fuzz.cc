// Fuzz target for the NBD decoders the tracker runs on untrusted bytes:
// DecodeRequest + ValidateRequest (the one gate every request passes), and
// the INFO/GO and meta-context option payload parsers.
//
// Beyond "no crash" it checks the gate's promises: an accepted request lies
// inside the export and within the size cap, has only flags valid for its
// command, and only WRITE carries a payload; a rejected WRITE still reports
// its payload so the server can drain it; a bad magic always disconnects.
#include <cstdint>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "tracker/nbd_protocol.h"

namespace blkrep::fuzz {
namespace {

namespace nbd = tracker::nbd;

void CheckRequest(std::span<const std::byte> header, const nbd::ExportLimits& limits) {
  nbd::Request r = nbd::DecodeRequest(header);
  nbd::Verdict v = nbd::ValidateRequest(r, limits);
  if (r.magic != nbd::kRequestMagic) {
    BLKREP_FUZZ_CHECK(v.kind == nbd::Verdict::Kind::kDisconnect, "a bad magic must disconnect");
    return;
  }
  BLKREP_FUZZ_CHECK(v.kind != nbd::Verdict::Kind::kDisconnect, "only a bad magic disconnects");
  BLKREP_FUZZ_CHECK(v.payload_bytes == (r.type == nbd::kCmdWrite ? r.length : 0),
                    "the payload to read or drain is the WRITE's length, and only a WRITE's");
  if (v.kind == nbd::Verdict::Kind::kError) {
    BLKREP_FUZZ_CHECK(v.error != 0 && !v.why.empty(), "an error names its value and its reason");
    return;
  }
  switch (r.type) {
    case nbd::kCmdRead:
    case nbd::kCmdWrite:
    case nbd::kCmdTrim:
    case nbd::kCmdWriteZeroes:
    case nbd::kCmdBlockStatus:
      BLKREP_FUZZ_CHECK(r.length > 0, "an accepted data request is not empty");
      BLKREP_FUZZ_CHECK(r.offset <= limits.size_bytes && r.length <= limits.size_bytes - r.offset,
                        "an accepted request lies inside the export");
      if (r.type == nbd::kCmdRead || r.type == nbd::kCmdWrite) {
        BLKREP_FUZZ_CHECK(r.length <= nbd::kMaxRequestBytes, "an accepted READ/WRITE is within 32 MiB");
      }
      if (r.type == nbd::kCmdBlockStatus) BLKREP_FUZZ_CHECK(limits.base_allocation, "BLOCK_STATUS needs its context");
      if (r.type != nbd::kCmdRead) BLKREP_FUZZ_CHECK(!limits.read_only || r.type == nbd::kCmdBlockStatus, "read-only");
      break;
    case nbd::kCmdFlush:
      BLKREP_FUZZ_CHECK(r.offset == 0 && r.length == 0, "FLUSH carries no range");
      break;
    case nbd::kCmdDisc:
      break;
    default:
      BLKREP_FUZZ_CHECK(false, "an unknown command was accepted");
  }
  const std::uint16_t known = nbd::kCmdFlagFua | nbd::kCmdFlagNoHole | nbd::kCmdFlagDf |
                              nbd::kCmdFlagReqOne | nbd::kCmdFlagFastZero;
  BLKREP_FUZZ_CHECK((r.flags & ~known) == 0, "an unknown flag was accepted");
  if (r.flags & nbd::kCmdFlagNoHole) BLKREP_FUZZ_CHECK(r.type == nbd::kCmdWriteZeroes, "NO_HOLE off WRITE_ZEROES");
  if (r.flags & nbd::kCmdFlagDf) BLKREP_FUZZ_CHECK(r.type == nbd::kCmdRead && limits.structured_replies, "DF");
}

}  // namespace

std::vector<std::vector<std::uint8_t>> SeedInputs() {
  std::vector<std::vector<std::uint8_t>> seeds;
  auto request = [](std::uint16_t flags, std::uint16_t type, std::uint64_t offset, std::uint32_t length) {
    std::vector<std::byte> out;
    nbd::PutU32(out, nbd::kRequestMagic);
    nbd::PutU16(out, flags);
    nbd::PutU16(out, type);
    nbd::PutU64(out, 0x1122334455667788ULL);
    nbd::PutU64(out, offset);
    nbd::PutU32(out, length);
    std::vector<std::uint8_t> seed = {0x07, 0, 0, 0, 0, 0x10, 0, 0};  // limits: flags + a 1 MiB export
    for (auto b : out) seed.push_back(static_cast<std::uint8_t>(b));
    return seed;
  };
  seeds.push_back(request(0, nbd::kCmdRead, 4096, 512));
  seeds.push_back(request(nbd::kCmdFlagFua, nbd::kCmdWrite, 0, 65536));
  seeds.push_back(request(nbd::kCmdFlagNoHole | nbd::kCmdFlagFastZero, nbd::kCmdWriteZeroes, 1 << 19, 1 << 19));
  seeds.push_back(request(nbd::kCmdFlagReqOne, nbd::kCmdBlockStatus, 0, 1 << 20));
  seeds.push_back(request(0, nbd::kCmdFlush, 0, 0));
  seeds.push_back(request(0, nbd::kCmdTrim, (1 << 20) - 1, 2));
  seeds.push_back({});
  return seeds;
}

}  // namespace blkrep::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace blkrep::fuzz;
  namespace nbd = blkrep::tracker::nbd;
  InputReader in(data, size);
  nbd::ExportLimits limits;
  std::uint8_t flags = in.U8();
  limits.read_only = flags & 1;
  limits.structured_replies = flags & 2;
  limits.base_allocation = flags & 4;
  limits.size_bytes = in.U64() >> (in.U8() % 64);
  // 1. The rest as a stream of request headers, as the server reads them.
  std::span<const std::byte> rest = in.Bytes(in.remaining());
  for (std::size_t at = 0; at + nbd::kRequestHeaderBytes <= rest.size(); at += nbd::kRequestHeaderBytes) {
    CheckRequest(rest.subspan(at, nbd::kRequestHeaderBytes), limits);
  }
  // 2. The whole input as option payloads.
  auto input = AsBytes(data, size);
  if (auto info = nbd::ParseInfoRequest(input); info.ok()) {
    BLKREP_FUZZ_CHECK(info->name.size() <= nbd::kMaxNameBytes, "an accepted export name is within 4096 bytes");
    BLKREP_FUZZ_CHECK(4 + info->name.size() + 2 + 2 * info->info_types.size() == size,
                      "an accepted INFO/GO payload is exactly its fields");
  }
  if (auto meta = nbd::ParseMetaContextRequest(input); meta.ok()) {
    std::size_t total = 8 + meta->export_name.size();
    for (const auto& q : meta->queries) {
      BLKREP_FUZZ_CHECK(q.size() <= nbd::kMaxNameBytes, "an accepted query is within 4096 bytes");
      total += 4 + q.size();
    }
    BLKREP_FUZZ_CHECK(total == size, "an accepted meta-context payload is exactly its fields");
  }
  return 0;
}
