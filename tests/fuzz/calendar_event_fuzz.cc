// Fuzz target for schedule specs (jobs/calendar_event.h, docs/schedules.md).
//
// Input: u8 zone (UTC, Europe/Vienna or America/New_York, set through TZ
// only when it changes), u64 start instant (mostly folded into 1900..2200),
// then the spec's bytes.
// Invariants: Parse fails only with kInvalidArgument, one line starting
// "schedule '" and of bounded length; what it accepts prints a canonical
// text that parses to an equal event with the same text; Next from the start
// gives strictly increasing instants, the same for the reparsed event.
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "jobs/calendar_event.h"
#include "tests/fuzz/fuzz_util.h"

using blkrep::jobs::CalendarEvent;

namespace {

constexpr const char* kZones[] = {"UTC", "Europe/Vienna", "America/New_York"};
constexpr std::size_t kMaxMessageBytes = 400;

void UseZone(const char* zone) {
  static const char* current = nullptr;
  if (current == zone) return;
  setenv("TZ", zone, 1);
  tzset();
  current = zone;
}

}  // namespace

std::vector<std::vector<std::uint8_t>> blkrep::fuzz::SeedInputs() {
  const std::vector<std::string_view> specs = {
      "mon,tue,wed,thu,fri", "sat..sun", "mon,wed,fri", "12:05", "*/5", "mon..wed 30/10",
      "mon..fri 8..17,22:0/15", "fri 12..13:5/20", "12/2:5", "*", "*-05", "Sat *-1..7 15:00",
      "2015-10-21", "minutely", "hourly", "daily", "weekly", "monthly", "yearly", "quarterly",
      "semiannually", "02:30", "*:*:0/20", "2026..2028-02-29 1:2:3", "mon..xyz 8:00", "1:2:3:4"};
  std::vector<std::vector<std::uint8_t>> seeds;
  std::uint8_t zone = 0;
  for (std::string_view spec : specs) {
    // 2026-03-28T22:10:01Z (odd: taken as is), the evening before Vienna's
    // spring change.
    std::vector<std::uint8_t> seed = {static_cast<std::uint8_t>(zone++ % 3),
                                      0xb9, 0x51, 0xc8, 0x69, 0, 0, 0, 0};
    seed.insert(seed.end(), spec.begin(), spec.end());
    seeds.push_back(std::move(seed));
  }
  return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  blkrep::fuzz::InputReader in(data, size);
  UseZone(kZones[in.U8() % 3]);
  const std::uint64_t raw_start = in.U64();
  // Mostly 1900..2200 where answers exist; sometimes the raw value, edges included.
  constexpr std::int64_t kFirst = -2208988800, kSpan = 9467280000;
  const std::int64_t start = (raw_start & 1U) != 0 ? static_cast<std::int64_t>(raw_start)
                                                   : kFirst + static_cast<std::int64_t>((raw_start >> 1) % kSpan);
  const std::string spec = in.String(in.remaining());

  auto event = CalendarEvent::Parse(spec);
  if (!event.ok()) {
    const std::string& message = event.status().message();
    BLKREP_FUZZ_CHECK(event.status().code() == blkrep::core::Code::kInvalidArgument, "an error that is not kInvalidArgument");
    BLKREP_FUZZ_CHECK(message.rfind("schedule '", 0) == 0, "an error without its prefix");
    BLKREP_FUZZ_CHECK(message.find('\n') == std::string::npos, "a multi-line error");
    BLKREP_FUZZ_CHECK(message.size() <= kMaxMessageBytes, "an overlong error");
    return 0;
  }
  const std::string text = event->Normalized();
  auto again = CalendarEvent::Parse(text);
  BLKREP_FUZZ_CHECK(again.ok(), "the canonical text does not parse: " + text);
  BLKREP_FUZZ_CHECK(*again == *event, "the canonical text means something else: " + text);
  BLKREP_FUZZ_CHECK(again->Normalized() == text, "the canonical text is not stable: " + text);

  std::int64_t t = start;
  for (int i = 0; i < 4; ++i) {
    const std::optional<std::int64_t> next = event->Next(t);
    BLKREP_FUZZ_CHECK(next == again->Next(t), "the reparsed event has another next instant");
    if (!next) break;
    BLKREP_FUZZ_CHECK(*next > t, "Next is not after its argument");
    t = *next;
  }
  return 0;
}
