// Fuzz target for the write-trace gate (tracker/trace.h, docs/trace-format.md).
//
// Input: u8 mode; even: the rest is the file as found on disk; odd: a recipe
// (volumes, records and batch size from the bytes) encoded with EncodeTrace,
// then (mostly) one byte mutated at a chosen offset, every checksum
// recomputed so the fuzzer reaches the field checks behind them, and the
// file maybe cut short.
// Invariants: DecodeTrace fails only with kCorruption, one line, starting
// "trace: "; what it accepts has 1..64 volumes with valid names and sizes,
// records inside their volumes with times that never decrease, and
// re-encodes (EncodeTrace accepts it) to bytes that decode to the same
// records with no torn tail; an unmutated, uncut recipe decodes to exactly
// its records.
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/hash.h"
#include "core/names.h"
#include "tests/fuzz/fuzz_util.h"
#include "tracker/trace.h"

using blkrep::tracker::Trace;
using blkrep::tracker::TraceOp;
using blkrep::tracker::TraceRecord;

namespace {

void Check(const std::vector<std::byte>& bytes) {
  auto t = blkrep::tracker::DecodeTrace(bytes);
  if (!t.ok()) {
    BLKREP_FUZZ_CHECK(t.status().code() == blkrep::core::Code::kCorruption, "an error that is not kCorruption");
    BLKREP_FUZZ_CHECK(t.status().message().rfind("trace: ", 0) == 0, "an error without its prefix");
    BLKREP_FUZZ_CHECK(t.status().message().find('\n') == std::string::npos, "a multi-line error");
    return;
  }
  BLKREP_FUZZ_CHECK(!t->volumes.empty() && t->volumes.size() <= 64, "an accepted volume count outside 1..64");
  for (const auto& v : t->volumes) {
    BLKREP_FUZZ_CHECK(blkrep::core::IsValidName(v.name), "an accepted invalid volume name");
    BLKREP_FUZZ_CHECK(v.size_bytes > 0, "an accepted empty volume");
  }
  std::uint64_t previous = 0;
  for (const auto& r : t->records) {
    BLKREP_FUZZ_CHECK(r.volume < t->volumes.size(), "an accepted record of an unknown volume");
    const auto size = t->volumes[r.volume].size_bytes;
    BLKREP_FUZZ_CHECK(r.length_bytes > 0 && r.offset_bytes <= size && r.length_bytes <= size - r.offset_bytes,
                      "an accepted record outside its volume");
    BLKREP_FUZZ_CHECK(r.time_ns >= previous, "accepted times that decrease");
    const auto op = static_cast<std::uint8_t>(r.op);
    BLKREP_FUZZ_CHECK(op >= 1 && op <= 3, "an accepted unknown op");
    previous = r.time_ns;
  }
  auto again = blkrep::tracker::EncodeTrace(*t, 7);
  BLKREP_FUZZ_CHECK(again.ok(), "an accepted trace EncodeTrace refuses");
  auto back = blkrep::tracker::DecodeTrace(*again);
  BLKREP_FUZZ_CHECK(back.ok() && back->torn_tail.empty() && back->records == t->records,
                    "an accepted trace that does not survive re-encoding");
}

// Recomputes the header's and every complete batch's checksums.
void Reseal(std::vector<std::byte>& b, std::size_t header_bytes) {
  using blkrep::core::LoadLe32;
  using blkrep::core::StoreLe64;
  using blkrep::core::Xxh3_64;
  if (header_bytes > b.size() || header_bytes < 8) return;
  StoreLe64(&b[header_bytes - 8], Xxh3_64(std::span(b).subspan(0, header_bytes - 8)));
  std::size_t pos = header_bytes;
  while (pos + 16 <= b.size()) {
    const std::uint64_t count = LoadLe32(&b[pos + 8]);
    const std::size_t end = pos + 16 + count * 24;
    if (count == 0 || end > b.size()) return;
    StoreLe64(&b[pos], Xxh3_64(std::span(b).subspan(pos + 8, end - pos - 8)));
    pos = end;
  }
}

}  // namespace

std::vector<std::vector<std::uint8_t>> blkrep::fuzz::SeedInputs() {
  Trace t;
  t.volumes = {{"disk0", 1 << 20}, {"d1", 4096}};
  t.started_unix_ns = 1700000000000000000ULL;
  t.records = {{1000, 4096, 8192, 0, TraceOp::kWrite},
               {2500, 0, 4096, 1, TraceOp::kWriteZeroes},
               {2500, 0, 1 << 20, 0, TraceOp::kTrim}};
  auto bytes = blkrep::tracker::EncodeTrace(t, 2);
  std::vector<std::uint8_t> raw = {0};
  if (bytes.ok()) {
    for (std::byte b : *bytes) raw.push_back(static_cast<std::uint8_t>(b));
  }
  return {raw, {1, 2, 5, 0, 3, 1, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 4, 1}};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  if (mode % 2 == 0) {
    std::vector<std::byte> rest(reinterpret_cast<const std::byte*>(data + 1),
                                reinterpret_cast<const std::byte*>(data + size));
    Check(rest);
    return 0;
  }
  blkrep::fuzz::InputReader in(data + 1, size - 1);
  Trace t;
  const int volumes = 1 + in.U8() % 3;
  for (int i = 0; i < volumes; ++i) {
    t.volumes.push_back({"v" + std::to_string(i), 1 + in.U32() % (1ULL << 24)});
  }
  t.started_unix_ns = in.U64();
  const std::uint32_t per_batch = 1 + in.U8() % 8;
  std::uint64_t time = 0;
  for (int n = in.U8() % 40; n > 0 && !in.empty(); --n) {
    TraceRecord r;
    r.volume = static_cast<std::uint16_t>(in.U8() % volumes);
    const std::uint64_t vsize = t.volumes[r.volume].size_bytes;
    r.offset_bytes = in.U32() % vsize;
    r.length_bytes = static_cast<std::uint32_t>(1 + in.U32() % (vsize - r.offset_bytes));
    r.op = static_cast<TraceOp>(1 + in.U8() % 3);
    time += in.U16();
    r.time_ns = time;
    t.records.push_back(r);
  }
  auto encoded = blkrep::tracker::EncodeTrace(t, per_batch);
  BLKREP_FUZZ_CHECK(encoded.ok(), "EncodeTrace refused a valid recipe");
  std::vector<std::byte> bytes = std::move(encoded).value();
  std::size_t header_bytes = 24 + 8;
  for (const auto& v : t.volumes) header_bytes += 1 + v.name.size() + 8;
  const std::uint8_t how = in.U8();
  if (how % 4 == 0) {
    auto plain = blkrep::tracker::DecodeTrace(bytes);
    BLKREP_FUZZ_CHECK(plain.ok() && plain->torn_tail.empty() && plain->records == t.records,
                      "an encoded recipe that does not decode to its records");
  }
  if (how % 4 >= 1 && !bytes.empty()) {
    bytes[in.U32() % bytes.size()] = static_cast<std::byte>(in.U8());
    if (how % 4 != 3) Reseal(bytes, header_bytes);
  }
  if ((how & 4) != 0) bytes.resize(in.U32() % (bytes.size() + 1));
  Check(bytes);
  return 0;
}
