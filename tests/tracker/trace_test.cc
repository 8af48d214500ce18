// Write traces (tracker/trace.h): the writer's files decode to what was
// recorded; a torn last batch is dropped and reported, never an error;
// every other damage is kCorruption naming the record and field; a write
// error stops the trace without failing the caller; and docs/trace-format.md's
// worked example is exactly what the encoder writes.
#include "tracker/trace.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/bytes.h"
#include "core/fault_injecting_file_system.h"
#include "core/file_system.h"
#include "core/hash.h"
#include "tests/core/temp_dir.h"

namespace blkrep::tracker {
namespace {

using core::test_support::TempDir;

constexpr std::uint64_t kMiB = 1 << 20;

std::vector<TraceVolume> TwoVolumes() { return {{"disk0", 8 * kMiB}, {"disk-1.x_y", 3 * kMiB + 512}}; }

Trace Example(std::size_t records) {
  Trace t;
  t.volumes = TwoVolumes();
  t.started_unix_ns = 1700000000123456789ULL;
  for (std::size_t i = 0; i < records; ++i) {
    TraceRecord r;
    r.time_ns = 1000 * (i / 3);  // equal times are allowed
    r.volume = static_cast<std::uint16_t>(i % 2);
    r.op = static_cast<TraceOp>(1 + i % 3);
    r.offset_bytes = (i * 4096) % (3 * kMiB);
    r.length_bytes = static_cast<std::uint32_t>(1 + (i * 37) % 65536);
    t.records.push_back(r);
  }
  return t;
}

std::vector<std::byte> Encode(const Trace& t, std::uint32_t per_batch) {
  auto bytes = EncodeTrace(t, per_batch);
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  return bytes.ok() ? *bytes : std::vector<std::byte>{};
}

std::size_t HeaderBytes(const std::vector<TraceVolume>& volumes) {
  std::size_t n = 24 + 8;
  for (const auto& v : volumes) n += 1 + v.name.size() + 8;
  return n;
}

// Offset of batch `b` when every batch but maybe the last holds per_batch records.
std::size_t BatchOffset(const Trace& t, std::uint32_t per_batch, std::size_t b) {
  return HeaderBytes(t.volumes) + b * (kTraceBatchHeaderBytes + per_batch * kTraceRecordBytes);
}

void Reseal(std::vector<std::byte>& bytes, std::size_t batch_offset) {
  const std::uint32_t count = core::LoadLe32(&bytes[batch_offset + 8]);
  const std::size_t length = kTraceBatchHeaderBytes + count * kTraceRecordBytes - 8;
  core::StoreLe64(&bytes[batch_offset], core::Xxh3_64(std::span(bytes).subspan(batch_offset + 8, length)));
}

void ResealHeader(std::vector<std::byte>& bytes, std::size_t header_bytes) {
  core::StoreLe64(&bytes[header_bytes - 8], core::Xxh3_64(std::span(bytes).subspan(0, header_bytes - 8)));
}

std::string CorruptionOf(const std::vector<std::byte>& bytes) {
  auto t = DecodeTrace(bytes);
  if (t.ok()) return "(decoded)";
  EXPECT_EQ(t.status().code(), core::Code::kCorruption) << t.status().ToString();
  EXPECT_EQ(t.status().message().find('\n'), std::string::npos);
  return t.status().message();
}

TEST(TraceTest, EncodedTraceDecodesToTheSameTrace) {
  for (std::uint32_t per_batch : {1u, 7u, 2730u, 4096u}) {
    Trace t = Example(100);
    auto decoded = DecodeTrace(Encode(t, per_batch));
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->started_unix_ns, t.started_unix_ns);
    ASSERT_EQ(decoded->volumes.size(), 2u);
    EXPECT_EQ(decoded->volumes[1].name, "disk-1.x_y");
    EXPECT_EQ(decoded->volumes[1].size_bytes, 3 * kMiB + 512);
    EXPECT_TRUE(decoded->records == t.records) << per_batch;
    EXPECT_TRUE(decoded->torn_tail.empty());
  }
}

TEST(TraceTest, HeaderOnlyTraceHasNoRecords) {
  Trace t = Example(0);
  auto decoded = DecodeTrace(Encode(t, 5));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_TRUE(decoded->records.empty());
  EXPECT_TRUE(decoded->torn_tail.empty());
}

TEST(TraceTest, TruncatedTrailingBatchIsDroppedAndReported) {
  Trace t = Example(25);
  const std::vector<std::byte> full = Encode(t, 10);  // batches of 10, 10, 5
  const std::size_t last = BatchOffset(t, 10, 2);
  ASSERT_EQ(full.size(), last + kTraceBatchHeaderBytes + 5 * kTraceRecordBytes);
  for (std::size_t cut : {std::size_t{1}, std::size_t{8}, kTraceBatchHeaderBytes - 1, kTraceBatchHeaderBytes,
                          kTraceBatchHeaderBytes + 30, full.size() - last - 1}) {
    std::vector<std::byte> bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(last + cut));
    auto decoded = DecodeTrace(bytes);
    ASSERT_TRUE(decoded.ok()) << cut << ": " << decoded.status().ToString();
    EXPECT_EQ(decoded->records.size(), 20u) << cut;
    EXPECT_NE(decoded->torn_tail.find("batch 2 at byte " + std::to_string(last)), std::string::npos)
        << decoded->torn_tail;
  }
}

TEST(TraceTest, ALastBatchWithUnwrittenSectorsIsTornOtherDamageIsCorruption) {
  Trace t = Example(150);
  std::vector<std::byte> bytes = Encode(t, 100);  // batches of 100 and 50 records
  // The size grew, the last pages never came: zeroes where records were.
  std::vector<std::byte> torn = bytes;
  std::fill(torn.end() - 1024, torn.end(), std::byte{0});
  auto decoded = DecodeTrace(torn);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->records.size(), 100u);
  EXPECT_NE(decoded->torn_tail.find("checksum"), std::string::npos) << decoded->torn_tail;

  // A flipped bit in the last batch is no tear: corruption, nothing lost silently.
  std::vector<std::byte> last_bad = bytes;
  last_bad[BatchOffset(t, 100, 1) + kTraceBatchHeaderBytes + 3] ^= std::byte{0x40};
  EXPECT_EQ(CorruptionOf(last_bad), "trace: batch 1 at byte " + std::to_string(BatchOffset(t, 100, 1)) +
                                        ": checksum mismatch");
  std::vector<std::byte> middle_bad = bytes;
  middle_bad[BatchOffset(t, 100, 0) + kTraceBatchHeaderBytes + 3] ^= std::byte{0x40};
  EXPECT_EQ(CorruptionOf(middle_bad), "trace: batch 0 at byte " + std::to_string(BatchOffset(t, 100, 0)) +
                                          ": checksum mismatch");
}

// A damaged record count that points past the end of the file is not taken
// for a torn tail when a complete batch of fewer records is there.
TEST(TraceTest, ADamagedBatchCountIsCorruptionNotATornTail) {
  Trace t = Example(5);
  std::vector<std::byte> bytes = Encode(t, 3);  // batches of 3 and 2
  const std::size_t at = BatchOffset(t, 3, 0);
  core::StoreLe32(bytes.data() + at + 8, 100);
  EXPECT_EQ(CorruptionOf(bytes), "trace: batch 0 at byte " + std::to_string(at) +
                                     ": record count 100 is damaged (a complete batch of fewer records follows it)");
}

// A write longer than any NBD request is refused (replay would size buffers
// from it).
TEST(TraceTest, AWriteLongerThanAnNbdRequestIsRefused) {
  Trace t;
  t.volumes = {{"disk0", 128u << 20}};
  t.records = {{0, 0, 64u << 20, 0, TraceOp::kTrim}};
  // A trim that long is an NBD request like any other.
  std::vector<std::byte> bytes = Encode(t, 10);
  ASSERT_TRUE(DecodeTrace(bytes).ok());
  // The same record as a write (op at byte 22 of the record), resealed.
  const std::size_t batch = BatchOffset(t, 10, 0);
  bytes[batch + kTraceBatchHeaderBytes + 22] = std::byte{static_cast<std::uint8_t>(TraceOp::kWrite)};
  Reseal(bytes, batch);
  std::string error = CorruptionOf(bytes);
  EXPECT_NE(error.find("write of 67108864 bytes (at most 33554432 per request)"), std::string::npos) << error;
}

TEST(TraceTest, ZeroFilledTailIsTorn) {
  Trace t = Example(12);
  std::vector<std::byte> bytes = Encode(t, 10);
  bytes.resize(bytes.size() + 4096, std::byte{0});  // the size grew, the data never came
  auto decoded = DecodeTrace(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->records.size(), 12u);
  EXPECT_NE(decoded->torn_tail.find("zero bytes"), std::string::npos) << decoded->torn_tail;
}

TEST(TraceTest, HeaderDamageIsCorruptionNamingTheField) {
  Trace t = Example(3);
  const std::vector<std::byte> good = Encode(t, 10);
  const std::size_t header = HeaderBytes(t.volumes);
  auto mutate = [&](std::size_t at, std::uint8_t value, bool reseal) {
    std::vector<std::byte> b = good;
    b[at] = std::byte{value};
    if (reseal) ResealHeader(b, header);
    return CorruptionOf(b);
  };
  EXPECT_EQ(CorruptionOf({}), "trace: header: 0 bytes, too short for one");
  EXPECT_EQ(mutate(0, 'X', true), "trace: header: bad magic (not a blkrep trace)");
  EXPECT_EQ(mutate(8, 2, true), "trace: header: version 2 (this blkrep reads 1)");
  EXPECT_EQ(mutate(12, 0, true), "trace: header: volume count 0 (1 to 64)");
  EXPECT_EQ(mutate(12, 65, true), "trace: header: volume count 65 (1 to 64)");
  EXPECT_EQ(mutate(14, 1, true), "trace: header: reserved field 1 (must be 0)");
  EXPECT_EQ(mutate(24, 0, true), "trace: header: volume 0: name length 0 (1 to 64)");
  EXPECT_EQ(mutate(25, '/', true), "trace: header: volume 0: invalid name");
  EXPECT_EQ(mutate(25, '.', true), "trace: header: volume 0: invalid name");
  {
    std::vector<std::byte> b = good;
    core::StoreLe64(&b[24 + 1 + 5], 0);
    ResealHeader(b, header);
    EXPECT_EQ(CorruptionOf(b), "trace: header: volume disk0: size 0 (1 to 2^62 bytes)");
  }
  {
    Trace twice = Example(0);
    twice.volumes[1].name = "disk0";
    twice.volumes[1].size_bytes = 5;
    Trace ok = twice;
    ok.volumes[1].name = "disk1";
    std::vector<std::byte> b = Encode(ok, 1);
    b[24 + 14 + 1 + 4] = std::byte{'0'};
    ResealHeader(b, HeaderBytes(ok.volumes));
    EXPECT_EQ(CorruptionOf(b), "trace: header: volume name disk0 given twice");
    EXPECT_EQ(EncodeTrace(twice).status().code(), core::Code::kInvalidArgument);
  }
  EXPECT_EQ(mutate(26, 'D', false), "trace: header: checksum mismatch");
  EXPECT_EQ(CorruptionOf(std::vector<std::byte>(good.begin(), good.begin() + 20)), "trace: header: cut short");
  EXPECT_EQ(CorruptionOf(std::vector<std::byte>(good.begin(), good.begin() + 30)),
            "trace: header: cut short in volume 0");
  EXPECT_EQ(CorruptionOf(std::vector<std::byte>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(header - 1))),
            "trace: header: cut short before its checksum");
}

TEST(TraceTest, RecordDamageIsCorruptionNamingTheRecordAndField) {
  Trace t = Example(25);
  const std::vector<std::byte> good = Encode(t, 10);
  const std::size_t batch1 = BatchOffset(t, 10, 1);
  // Record 13 is the 4th of batch 1: volume 1 (3 MiB + 512 bytes), time 4000.
  const std::size_t rec = batch1 + kTraceBatchHeaderBytes + 3 * kTraceRecordBytes;
  const std::string where = "trace: record 13 (batch 1 at byte " + std::to_string(batch1) + "): ";
  auto with = [&](auto change) {
    std::vector<std::byte> b = good;
    change(b);
    Reseal(b, batch1);
    return CorruptionOf(b);
  };
  EXPECT_EQ(with([&](auto& b) { b[rec + 22] = std::byte{0}; }), where + "op 0 (1 write, 2 trim, 3 write-zeroes)");
  EXPECT_EQ(with([&](auto& b) { b[rec + 22] = std::byte{4}; }), where + "op 4 (1 write, 2 trim, 3 write-zeroes)");
  EXPECT_EQ(with([&](auto& b) { b[rec + 23] = std::byte{1}; }), where + "reserved field 1 (must be 0)");
  EXPECT_EQ(with([&](auto& b) { b[rec + 20] = std::byte{2}; }), where + "volume index 2 (the header names 2 volumes)");
  EXPECT_EQ(with([&](auto& b) { core::StoreLe32(&b[rec + 16], 0); }), where + "length 0");
  EXPECT_EQ(with([&](auto& b) {
              core::StoreLe64(&b[rec + 8], 3 * kMiB);
              core::StoreLe32(&b[rec + 16], 513);
            }),
            where + "offset 3145728 + length 513 past the end of volume disk-1.x_y (3146240 bytes)");
  EXPECT_EQ(with([&](auto& b) {
              core::StoreLe64(&b[rec + 8], ~0ULL - 10);
              core::StoreLe32(&b[rec + 16], 100);
            }),
            where + "offset 18446744073709551605 + length 100 past the end of volume disk-1.x_y (3146240 bytes)");
  EXPECT_EQ(with([&](auto& b) { core::StoreLe64(&b[rec], 2999); }),
            where + "time 2999 ns before the previous record's 4000 ns");
  EXPECT_EQ(with([&](auto& b) { core::StoreLe32(&b[batch1 + 8], 0); }),
            "trace: batch 1 at byte " + std::to_string(batch1) + ": record count 0 (1 to 4096)");
  EXPECT_EQ(with([&](auto& b) { core::StoreLe32(&b[batch1 + 12], 7); }),
            "trace: batch 1 at byte " + std::to_string(batch1) + ": reserved field 7 (must be 0)");
}

TEST(TraceTest, EncodeRefusesWhatDecodeWouldRefuse) {
  Trace t = Example(3);
  t.records[2].time_ns = 0;
  t.records[1].time_ns = 5;
  EXPECT_EQ(EncodeTrace(t).status().message(), "trace: record 2: time 0 ns before the previous record's 5 ns");
  Trace v = Example(0);
  v.volumes[0].name = "a/b";
  EXPECT_EQ(EncodeTrace(v).status().code(), core::Code::kInvalidArgument);
  EXPECT_EQ(EncodeTrace(Example(1), 0).status().code(), core::Code::kInvalidArgument);
  EXPECT_EQ(EncodeTrace(Example(1), 4097).status().code(), core::Code::kInvalidArgument);
}

TEST(TraceTest, WriterRecordsFromManyThreadsInOrderOfTime) {
  TempDir dir;
  const std::string path = dir.File("t.trace");
  auto writer = TraceWriter::Create(path, TwoVolumes());
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  constexpr int kThreads = 4;
  constexpr int kPerThread = 3000;  // several full batches
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      for (int i = 0; i < kPerThread; ++i) {
        (*writer)->Record(static_cast<std::uint16_t>(th % 2), TraceOp::kWrite,
                          static_cast<std::uint64_t>(th) * kMiB / 2 + static_cast<std::uint64_t>(i) * 8, 512);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  // Refused: past the end, unknown volume, zero length.
  (*writer)->Record(1, TraceOp::kTrim, 3 * kMiB, 4096);
  (*writer)->Record(2, TraceOp::kTrim, 0, 4096);
  (*writer)->Record(0, TraceOp::kTrim, 0, 0);
  ASSERT_TRUE((*writer)->Close().ok());
  EXPECT_EQ((*writer)->records_written(), std::uint64_t{kThreads * kPerThread});
  EXPECT_EQ((*writer)->records_dropped(), 3u);
  (*writer)->Record(0, TraceOp::kWrite, 0, 1);  // after Close: ignored
  EXPECT_TRUE((*writer)->Close().ok());

  auto trace = ReadTrace(path);
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_TRUE(trace->torn_tail.empty()) << trace->torn_tail;
  ASSERT_EQ(trace->records.size(), std::size_t{kThreads * kPerThread});
  // Each thread's records are in its own order.
  std::vector<std::uint64_t> next(kThreads, 0);
  for (const auto& r : trace->records) {
    const int th = static_cast<int>(r.offset_bytes / (kMiB / 2));
    ASSERT_LT(th, kThreads);
    EXPECT_EQ(r.offset_bytes, static_cast<std::uint64_t>(th) * kMiB / 2 + next[th] * 8);
    ++next[th];
  }
  auto now = std::chrono::system_clock::now().time_since_epoch();
  const auto now_ns = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count());
  EXPECT_LE(trace->started_unix_ns, now_ns);
  EXPECT_GT(trace->started_unix_ns, now_ns - 60'000'000'000ULL);
}

TEST(TraceTest, WriteErrorStopsTheTraceAndIsReportedByClose) {
  TempDir dir;
  core::FaultInjectingFileSystem fs(core::PosixFileSystemInstance());
  const std::string path = dir.File("t.trace");
  auto writer = TraceWriter::Create(fs, path, TwoVolumes());
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  // The first batch is written; the second fails.
  fs.FailAfter(core::FileOp::kWrite, 1, EIO);
  for (std::uint32_t i = 0; i < 3 * kTraceWriterBatchRecords + 5; ++i) {
    (*writer)->Record(0, TraceOp::kWrite, i * 4096ULL % (8 * kMiB), 4096);
  }
  core::Status closed = (*writer)->Close();
  EXPECT_EQ(closed.code(), core::Code::kIoError) << closed.ToString();
  EXPECT_NE(closed.message().find("trace: writing a batch"), std::string::npos) << closed.ToString();
  EXPECT_EQ((*writer)->records_written(), kTraceWriterBatchRecords);
  EXPECT_EQ((*writer)->records_dropped(), 2 * kTraceWriterBatchRecords + 5);
  auto trace = ReadTrace(path);
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->records.size(), kTraceWriterBatchRecords);
}

TEST(TraceTest, APartialBatchReachesTheFileWithinAboutASecond) {
  // A guest that writes a little and goes quiet: its records are on disk
  // without another record, a full batch or the tracker stopping.
  TempDir dir;
  const std::string path = dir.File("t.trace");
  auto writer = TraceWriter::Create(path, TwoVolumes());
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  (*writer)->Record(0, TraceOp::kWrite, 0, 4096);
  (*writer)->Record(1, TraceOp::kTrim, 8192, 4096);
  for (int i = 0; i < 500 && (*writer)->records_written() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ((*writer)->records_written(), 2u);
  auto before_close = ReadTrace(path);
  ASSERT_TRUE(before_close.ok()) << before_close.status().ToString();
  ASSERT_EQ(before_close->records.size(), 2u);
  EXPECT_EQ(before_close->records[1].op, TraceOp::kTrim);
  EXPECT_TRUE(before_close->torn_tail.empty());
  // Later records still go out, and Close writes the rest.
  (*writer)->Record(0, TraceOp::kWrite, 4096, 4096);
  ASSERT_TRUE((*writer)->Close().ok());
  EXPECT_EQ((*writer)->records_written(), 3u);
  EXPECT_EQ((*writer)->records_dropped(), 0u);
  auto after = ReadTrace(path);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->records.size(), 3u);
}

TEST(TraceTest, TheWriterStopsAtTheFileSizeLimitWithEverythingBeforeReadable) {
  // The 4 GiB limit, scaled down: room for the header and two full batches.
  TempDir dir;
  const std::string path = dir.File("t.trace");
  auto header_only = TraceWriter::Create(path, TwoVolumes());
  ASSERT_TRUE(header_only.ok());
  ASSERT_TRUE((*header_only)->Close().ok());
  const std::uint64_t header = std::filesystem::file_size(path);
  const std::uint64_t batch = kTraceBatchHeaderBytes + std::uint64_t{kTraceWriterBatchRecords} * kTraceRecordBytes;
  auto writer = TraceWriter::Create(core::PosixFileSystemInstance(), path, TwoVolumes(), header + 2 * batch);
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  const std::uint32_t total = 3 * kTraceWriterBatchRecords + 7;
  for (std::uint32_t i = 0; i < total; ++i) (*writer)->Record(0, TraceOp::kWrite, i * 4096ULL % (8 * kMiB), 4096);
  // Not a failure of the trace: the rest is counted as dropped.
  EXPECT_TRUE((*writer)->Close().ok());
  EXPECT_EQ((*writer)->records_written(), 2u * kTraceWriterBatchRecords);
  EXPECT_EQ((*writer)->records_dropped(), total - 2u * kTraceWriterBatchRecords);
  EXPECT_EQ(std::filesystem::file_size(path), header + 2 * batch);
  auto trace = ReadTrace(path);
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->records.size(), 2u * kTraceWriterBatchRecords);
  EXPECT_TRUE(trace->torn_tail.empty());
  EXPECT_EQ(trace->records.back().offset_bytes, (2ULL * kTraceWriterBatchRecords - 1) * 4096 % (8 * kMiB));
}

TEST(TraceTest, ReadTraceOfAMissingFileIsNotFound) {
  TempDir dir;
  EXPECT_EQ(ReadTrace(dir.File("missing")).status().code(), core::Code::kNotFound);
}

// docs/trace-format.md's worked example: the bytes of its ```hex block are
// what EncodeTrace writes for the trace the document describes.
TEST(TraceTest, WorkedExampleOfTheFormatDocument) {
  std::ifstream doc(std::string(BLKREP_SOURCE_DIR) + "/docs/trace-format.md");
  ASSERT_TRUE(doc) << "docs/trace-format.md";
  std::vector<std::byte> documented;
  std::string line;
  bool in_block = false, seen_block = false;
  while (std::getline(doc, line)) {
    if (line == "```hex") {
      in_block = seen_block = true;
      continue;
    }
    if (in_block && line == "```") break;
    if (!in_block) continue;
    std::istringstream words(line.substr(0, line.find('#')));
    std::string word;
    while (words >> word) {
      ASSERT_EQ(word.size(), 2u) << "not a hex byte: '" << word << "' in: " << line;
      documented.push_back(static_cast<std::byte>(std::stoul(word, nullptr, 16)));
    }
  }
  ASSERT_TRUE(seen_block) << "no ```hex block in docs/trace-format.md";

  Trace t;
  t.volumes = {{"disk0", kMiB}};
  t.started_unix_ns = 1700000000000000000ULL;
  t.records = {{1000, 4096, 8192, 0, TraceOp::kWrite},
               {2500, 65536, 4096, 0, TraceOp::kWriteZeroes},
               {2500, 0, 1048576, 0, TraceOp::kTrim}};
  std::vector<std::byte> encoded = Encode(t, 2);
  std::ostringstream hex;
  for (std::size_t i = 0; i < encoded.size(); ++i) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned>(encoded[i]));
    hex << buf << ((i + 1) % 16 == 0 ? "\n" : " ");
  }
  EXPECT_EQ(documented, encoded) << "EncodeTrace writes:\n" << hex.str();
  auto decoded = DecodeTrace(documented);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_TRUE(decoded->records == t.records);
}

}  // namespace
}  // namespace blkrep::tracker
